"""The participant's end of a recording, in real headless Chromium with the fake microphone, against a real
scoring server, Redis and dashboard: the page's counters come from its outbox (what the server acknowledged),
so a reload mid-session changes nothing and they equal what the server holds; "Stop and finish" ends on a
sentence that says every part was received, or how many still wait and that they will be sent (and turns
into the first once they are); a stopped scoring server reads "scoring server unreachable", a lost network
"offline".
"""
import contextlib

from browser_harness import (PHONE, assert_fits, axe_violations, by_id, free_port, needs_chromium, save_screenshot,
                             set_viewport, severe_console, wait_until)
from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard, WebConfig
from moodstream.server.app import BackgroundServer, ServerConfig
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import stub_for, tiny_model, write_tokens
from test_record_browser import (enrolment_link, get_score, interview_wav, page_state, record,  # noqa: F401
                                 record_stack, recording_browser)

pytestmark = needs_chromium

# Every value the network tile takes from here on, so a test can say which it never showed.
WATCH_NETWORK = """
window.networkSeen = new Set([document.getElementById('network').dataset.state]);
new MutationObserver(() => window.networkSeen.add(document.getElementById('network').dataset.state))
  .observe(document.getElementById('network'), {attributes: true, attributeFilter: ['data-state']});"""
FINISHED = """
const node = document.getElementById('finished');
return node.hidden ? null : {text: node.textContent, parts: Number(node.dataset.parts),
  received: Number(node.dataset.received), waiting: Number(node.dataset.waiting), complete: node.dataset.complete};"""


class Stack:
    """Server (its gRPC-web port fixed, so it can stop and start again where the page calls it) and dashboard."""

    def __init__(self, redis_url, tmp_path):
        self.tokens = write_tokens(tmp_path)
        self.web = WebConfig(port=free_port(), access_log=False, log_level="warning")
        self.config = ServerConfig(checkpoint="", redis_url=redis_url, port=free_port(), tokens_file=self.tokens.path,
                                   precision="fp32", grpc_web_port=free_port(),
                                   grpc_web_origins=(f"http://127.0.0.1:{self.web.port}",))
        self.server = None

    def start_server(self):
        self.server = BackgroundServer(self.config, tiny_model(seed=7)).start()

    def stop_server(self):
        self.server.stop()

    def score(self, session: str):
        return get_score(self.config.port, self.tokens.by_name["admin"], session)

    def listed(self, session: str):
        with stub_for(self.config.port) as stub:
            listed = stub.ListSessions(pb.ListSessionsRequest(participant_id="p1"),
                                       metadata=self.tokens.metadata("admin"), timeout=30)
        [summary] = [entry for entry in listed.sessions if entry.session_id == session]
        return summary


@contextlib.contextmanager
def restartable_stack(redis_url, tmp_path):
    stack = Stack(redis_url, tmp_path)
    stack.start_server()
    dashboard = BackgroundDashboard(FeedConfig(
        server=f"127.0.0.1:{stack.config.port}", token=stack.tokens.by_name["reader-p1"], participants=["p1"],
        record_endpoint=f"http://127.0.0.1:{stack.config.grpc_web_port}"), stack.web).start()
    try:
        yield stack, dashboard
    finally:
        dashboard.stop()
        stack.server.stop()


def ready(driver) -> bool:
    return driver.execute_script("return document.body.dataset.ready") == "1"


def finished(driver):
    return driver.execute_script(FINISHED)


def test_the_page_ends_on_what_the_server_holds_and_its_counters_survive_a_reload(redis_url, tmp_path,
                                                                                  interview_wav):
    wav, _ = interview_wav
    with restartable_stack(redis_url, tmp_path) as (stack, dashboard), recording_browser(wav) as driver:
        set_viewport(driver, PHONE)
        record(driver, enrolment_link(stack.server, dashboard.url, stack.tokens), 0)
        wait_until(driver, lambda d: page_state(d)["sent"] >= 1, "the first part's ack", timeout=40)
        session = page_state(driver)["session"]
        save_screenshot(driver, "record-recording-phone")  # docs/record.png

        driver.refresh()  # mid-session
        wait_until(driver, ready, "the page to load again")
        resumed = page_state(driver)
        assert resumed["state"] == "paused" and resumed["session"] == session and resumed["sent"] >= 1, resumed
        # Once nothing is in flight, the page's count is the server's (a call the reload cut short is resent).
        wait_until(driver, lambda d: (lambda s: s["waiting"] == 0 and s["sent"] == stack.score(session).segments)(
            page_state(d)), "the page's Sent to equal the server's segments after the reload", timeout=40)

        by_id(driver, "start").click()
        wait_until(driver, lambda d: page_state(d)["state"] == "recording", "recording to continue")
        driver.execute_script(WATCH_NETWORK)
        stack.stop_server()
        wait_until(driver, lambda d: (lambda s: s["waiting"] >= 1 and s["network"] == "unreachable")(page_state(d)),
                   "a part waiting while the scoring server is unreachable", timeout=60)
        by_id(driver, "stop").click()
        wait_until(driver, lambda d: page_state(d)["state"] == "finished", "the session to finish")
        waiting = finished(driver)
        assert waiting["waiting"] >= 1 and waiting["complete"] == "0", waiting
        assert waiting["received"] + waiting["waiting"] == waiting["parts"], waiting
        assert (f"Session finished — {waiting['received']} of {waiting['parts']} parts received by the server."
                in waiting["text"]), waiting
        assert "will be sent" in waiting["text"], waiting
        assert page_state(driver)["sent"] == waiting["received"]
        assert "offline" not in driver.execute_script("return [...window.networkSeen]")
        save_screenshot(driver, "record-finished-waiting-phone")

        stack.start_server()
        wait_until(driver, lambda d: (finished(d) or {}).get("complete") == "1",
                   "the finished page to say every part was received", timeout=60)
        done = finished(driver)
        score, summary = stack.score(session), stack.listed(session)
        assert done["parts"] == waiting["parts"] == score.segments == summary.segments, (done, score.segments)
        assert done["text"] == f"Session finished — all {score.segments} parts received by the server.", done
        assert score.session_state == summary.state == pb.SESSION_STATE_ENDED
        assert page_state(driver)["sent"] == score.segments and page_state(driver)["waiting"] == 0

        driver.refresh()  # the finished page stays what it was
        wait_until(driver, ready, "the page to load again")
        assert finished(driver)["text"] == done["text"], finished(driver)
        after = page_state(driver)
        assert after["state"] == "finished" and after["sent"] == score.segments and after["session"] == session, after
        assert by_id(driver, "start").text == "Start a new recording"
        assert "score" not in by_id(driver, "controls").text.lower()  # the participant never sees a score
        assert_fits(driver, "finished record page, phone")
        assert not axe_violations(driver), axe_violations(driver)
        # The outage's refused calls are logged by Chromium as failed loads; nothing else may be.
        errors = [entry for entry in severe_console(driver) if entry["source"] != "network"]
        assert not errors, errors
        save_screenshot(driver, "record-finished-phone")  # docs/record-finished.png


def test_a_lost_network_reads_offline_not_an_unreachable_server(redis_url, tmp_path, interview_wav):
    wav, _ = interview_wav
    with record_stack(redis_url, tmp_path) as (server, dashboard, tokens), recording_browser(wav) as driver:
        record(driver, enrolment_link(server, dashboard.url, tokens), 0)
        driver.execute_script(WATCH_NETWORK)
        driver.execute_cdp_cmd("Network.enable", {})
        network = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, **network})
        wait_until(driver, lambda d: (lambda s: s["waiting"] >= 1 and s["network"] == "offline")(page_state(d)),
                   "a part waiting while the network is lost", timeout=60)
        assert page_state(driver)["sent"] == 0
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": False, **network})
        wait_until(driver, lambda d: (lambda s: s["waiting"] == 0 and s["sent"] >= 1)(page_state(d)),
                   "the waiting part to be sent once the network is back", timeout=60)
        assert "unreachable" not in driver.execute_script("return [...window.networkSeen]")
        session = page_state(driver)["session"]
        by_id(driver, "stop").click()
        wait_until(driver, lambda d: (finished(d) or {}).get("complete") == "1", "every part to be received",
                   timeout=60)
        score = get_score(server.port, tokens.by_name["admin"], session)
        assert finished(driver)["text"] == (f"Session finished — all {score.segments} parts received by the server."
                                            if score.segments != 1 else
                                            "Session finished — its 1 part received by the server.")
        assert page_state(driver)["sent"] == score.segments and score.session_state == pb.SESSION_STATE_ENDED

