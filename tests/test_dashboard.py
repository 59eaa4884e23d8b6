"""The clinician dashboard's routes and event stream, against a real scoring server, Redis and uvicorn."""
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from moodstream import SCREENING_NOTICE
from moodstream.dashboard.feed import FeedConfig, read_participants_file
from moodstream.dashboard.server import BackgroundDashboard
from moodstream.server.app import BackgroundServer, ServerConfig
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import chunk, end, header, make_chunks, stream, stub_for
from clocks import ManualClock
from waiting import wait_for


@pytest.fixture
def server(start_server):
    """A scoring server of the conftest's factory per test, on a Redis emptied for the test."""
    return start_server()


def dashboard_for(port: int, token: str, participants, clock=time.time, **options) -> BackgroundDashboard:
    config = FeedConfig(server=f"127.0.0.1:{port}", token=token, participants=list(participants),
                        health_interval=0.3, **options)
    return BackgroundDashboard(config, clock=clock)


def scored_times(responses) -> list[float]:
    """The server's time of each score a Stream call answered with."""
    return [r.score.time_unix for r in responses if r.WhichOneof("message") == "score"]


def directory_rounds(dashboard, count: int) -> None:
    """Wait until the dashboard has taken `count` more answers from the session directory."""
    following = dashboard.feed.following
    target = following.directory_answers + count
    wait_for(lambda: following.directory_answers >= target, what=f"{count} more session directory answers")


def stream_session(port, tokens, session, participant, count, seed=0, first_seq=0, finish=True):
    chunks = make_chunks(count, seed=seed)
    requests = [header(session, participant)] + [chunk(first_seq + i, c) for i, c in enumerate(chunks)]
    if finish:
        requests.append(end(first_seq + count - 1))
    with stub_for(port) as stub:
        return stream(stub, requests, tokens.metadata("agent"))


def get_json(url):
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.json()


def overview(dashboard):
    return get_json(dashboard.url + "api/overview")


def participant_state(dashboard, participant):
    return next(p for p in overview(dashboard)["connection"]["participants"] if p["participant_id"] == participant)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SseReader:
    """Reads server-sent events from a real HTTP stream on a thread."""

    def __init__(self, url):
        self.events = []
        self.error = None
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=30.0))
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url):
        try:
            with self._client.stream("GET", url) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                kind, data = None, []
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data.append(line[6:])
                    elif line == "" and kind:
                        self.events.append((kind, json.loads("\n".join(data))))
                        kind, data = None, []
        except Exception as error:  # surfaced by the test
            if not self._stop.is_set():
                self.error = error

    def of(self, kind):
        return [data for k, data in self.events if k == kind]

    def close(self):
        self._stop.set()
        self._client.close()
        self._thread.join(0.2)  # a blocked read ends when the dashboard stops


def latest_state(reader: SseReader) -> str | None:
    """The session state the latest score or session event on the stream carried."""
    states = [data["session"]["state"] for kind, data in list(reader.events) if kind in ("score", "session")]
    return states[-1] if states else None


# ---------------------------------------------------------------------------- configuration


def test_config_refuses_what_cannot_work(tmp_path):
    assert FeedConfig(server="127.0.0.1:1", token="t", participants=[]).participants == []  # the directory's
    with pytest.raises(ValueError, match="read token"):
        FeedConfig(server="127.0.0.1:1", token=" ", participants=["p1"])
    with pytest.raises(ValueError, match="HOST:PORT"):
        FeedConfig(server="localhost", token="t", participants=["p1"])
    with pytest.raises(ValueError, match="participant id"):
        FeedConfig(server="127.0.0.1:1", token="t", participants=["bad id!"])
    listed = tmp_path / "participants.txt"
    listed.write_text("# study A\np1\n\np2  # second\np1\n")
    assert read_participants_file(listed) == ["p1", "p2", "p1"]
    assert FeedConfig(server="h:1", token="t", participants=read_participants_file(listed)).participants == ["p1", "p2"]
    listed.write_text("p1\nnot valid\n")
    with pytest.raises(ValueError, match=r"participants.txt:2"):
        read_participants_file(listed)


def test_cli_explains_an_empty_participants_file_and_a_missing_token(capsys, monkeypatch, tmp_path):
    from moodstream.compose.cli import main

    monkeypatch.delenv("MOODSTREAM_TOKEN", raising=False)
    empty = tmp_path / "nobody.txt"
    empty.write_text("# nobody yet\n")
    assert main(["dashboard", "--server", "127.0.0.1:1", "--token", "x", "--participants-file", str(empty)]) == 2
    assert "names no participant; leave it out to follow whoever has a recent session" in capsys.readouterr().err
    assert main(["dashboard", "--server", "127.0.0.1:1", "--participant", "p1"]) == 2
    assert "read token" in capsys.readouterr().err


def test_the_dashboard_never_imports_torch_and_its_cli_module_stays_light():
    import subprocess
    import sys

    code = ("import sys, moodstream.dashboard.cli as c; light = not {'starlette', 'uvicorn', 'grpc'} & set(sys.modules); "
            "import moodstream.dashboard.server, moodstream.dashboard.app; print(light, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "False"], result.stderr


def test_cli_help_never_prints_the_token(capsys, monkeypatch):
    from moodstream.compose.cli import main

    monkeypatch.setenv("MOODSTREAM_TOKEN", "secret-token-value")
    with pytest.raises(SystemExit):
        main(["dashboard", "--help"])
    assert "secret-token-value" not in capsys.readouterr().out


def test_vendored_chart_library_is_the_version_the_lock_file_pins_and_nothing_is_remote():
    import moodstream.dashboard

    folder = Path(moodstream.dashboard.__file__).resolve().parent
    pinned = json.loads((folder / "package.json").read_text())["dependencies"]["uplot"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin an exact version"
    locked = json.loads((folder / "package-lock.json").read_text())["packages"]["node_modules/uplot"]
    assert locked["version"] == pinned and locked["integrity"].startswith("sha512-")
    assert f"(v{pinned})" in (folder / "static" / "vendor" / "uPlot.iife.min.js").read_text()[:200]
    own = [*folder.glob("templates/*.html"), *folder.glob("static/*.js"), *folder.glob("static/*.css")]
    assert len(own) >= 6
    for path in own:
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", path.read_text()), path


# ---------------------------------------------------------------------------- routes


def test_pages_and_api_show_a_streamed_session_with_its_model_version(server, tokens):
    stream_session(server.port, tokens, "sess-a", "p1", 3, seed=1)
    with dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1"]) as dashboard:
        data = wait_for(lambda: (o := overview(dashboard))["sessions"] and o, what="the session")
        [summary] = data["sessions"]
        assert summary["session_id"] == "sess-a" and summary["participant_id"] == "p1"
        assert summary["segments"] == 3 and summary["device_id"] == "test-device"
        assert summary["model_version"] == server.model_version
        assert summary["speech_seconds"] == pytest.approx(21.0)
        # The agent sent End: streaming until the dashboard's next state check of a quiet session asks the
        # server (every 0.3 s here), finished from then on. A slow machine may already show finished.
        assert summary["state"] in ("streaming", "finished")
        wait_for(lambda: overview(dashboard)["sessions"][0]["state"] == "finished", what="the session finished")
        with stub_for(server.port) as stub:
            latest = stub.GetScore(pb.GetScoreRequest(session_id="sess-a"), metadata=tokens.metadata("admin"))
        assert summary["probability"] == pytest.approx(latest.probability)
        assert summary["above_threshold"] == latest.above_threshold
        assert summary["evidence_sufficient"] is latest.evidence_sufficient is True  # min_evidence_segments = 1
        assert data["settings"]["notice"] == SCREENING_NOTICE
        assert data["connection"]["server"]["state"] == "connected"

        # URLs hold opaque refs only, never the ids themselves
        assert re.fullmatch(r"[0-9a-f]{20}", summary["ref"]) and re.fullmatch(r"[0-9a-f]{20}",
                                                                              summary["participant_ref"])
        assert dashboard.session_url("sess-a").endswith("/s/" + summary["ref"])

        detail = get_json(f"{dashboard.url}api/s/{summary['ref']}")
        assert [p["segments"] for p in detail["points"]] == [1, 2, 3]
        assert all(p["model_version"] == server.model_version for p in detail["points"])
        assert detail["points"][-1]["probability"] == pytest.approx(latest.probability)
        history = get_json(f"{dashboard.url}api/p/{summary['participant_ref']}")
        assert [s["session_id"] for s in history["sessions"]] == ["sess-a"]

        for path in ("", f"s/{summary['ref']}", f"p/{summary['participant_ref']}"):
            page = httpx.get(dashboard.url + path, timeout=10)
            assert page.status_code == 200, path
            assert "Screening aid, not a diagnosis." in page.text and SCREENING_NOTICE in page.text
            assert "sess-a" not in page.text  # ids reach the page only through the API / event stream
            csp = page.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            assert page.headers["cache-control"] == "no-store"
            # every script and stylesheet is served by the dashboard itself
            assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
            assert assets and not [a for a in assets if re.match(r"(https?:)?//", a)]
            for asset in assets:
                if asset.startswith("/static/"):
                    assert httpx.get(dashboard.url + asset.lstrip("/"), timeout=10).status_code == 200, asset
        assert httpx.get(dashboard.url + "healthz", timeout=10).json()["server"] == "connected"


def test_unknown_refs_are_404_pages_that_still_carry_the_notice(server, tokens):
    with dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1"]) as dashboard:
        for path in ("s/0123456789abcdef0123", "p/0123456789abcdef0123", "s/sess-a"):
            page = httpx.get(dashboard.url + path, timeout=10)
            assert page.status_code == 404
            assert "not a diagnosis" in page.text
        api = httpx.get(dashboard.url + "api/s/nope", timeout=10)
        assert api.status_code == 404 and "not a diagnosis" in api.json()["notice"]
        assert httpx.get(dashboard.url + "s/nope/events", timeout=10).status_code == 404


def test_only_participants_the_token_may_read_are_shown(server, tokens):
    stream_session(server.port, tokens, "mine", "p1", 1, seed=2)
    stream_session(server.port, tokens, "theirs", "p2", 1, seed=3)
    with dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1", "p2"]) as dashboard:
        wait_for(lambda: participant_state(dashboard, "p2")["state"] == "not permitted", what="p2 refused")
        wait_for(lambda: overview(dashboard)["sessions"], what="p1's session")
        data = overview(dashboard)
        assert [s["session_id"] for s in data["sessions"]] == ["mine"]
        p2 = participant_state(dashboard, "p2")
        assert "may not read participant p2" in p2["message"]
        assert get_json(f"{dashboard.url}api/p/{p2['ref']}")["sessions"] == []
        assert participant_state(dashboard, "p1")["state"] == "following"


def rows(dashboard) -> dict[str, str]:
    """session id -> state of the overview's rows."""
    return {s["session_id"]: s["state"] for s in overview(dashboard)["sessions"]}


def test_without_a_participant_list_the_overview_lists_the_directorys_sessions_with_their_states(server, tokens):
    stream_session(server.port, tokens, "p1-live", "p1", 1, seed=4, finish=False)
    stream_session(server.port, tokens, "p2-live", "p2", 1, seed=5, finish=False)
    stream_session(server.port, tokens, "p3-done", "p3", 1, seed=6)
    with dashboard_for(server.port, tokens.by_name["admin"], [], discover_interval=0.3) as dashboard:
        # the states come from the directory: closed without End, or ended
        expected = {"p1-live": "interrupted", "p2-live": "interrupted", "p3-done": "finished"}
        wait_for(lambda: rows(dashboard) == expected, what=f"the overview to be {expected}")
        data = overview(dashboard)
        assert data["connection"]["discovering"] is True
        assert sorted(p["participant_id"] for p in data["connection"]["participants"]) == ["p1", "p2", "p3"]
        # a session that starts later shows up without a restart
        stream_session(server.port, tokens, "p4-new", "p4", 1, seed=7, finish=False)
        wait_for(lambda: "p4-new" in rows(dashboard), what="p4-new")
    # a scoped token discovers only what it may read
    with dashboard_for(server.port, tokens.by_name["reader-p1"], [], discover_interval=0.3) as dashboard:
        wait_for(lambda: rows(dashboard), what="p1's session")
        directory_rounds(dashboard, 3)
        data = overview(dashboard)
        assert [s["session_id"] for s in data["sessions"]] == ["p1-live"]
        assert [p["participant_id"] for p in data["connection"]["participants"]] == ["p1"]


def test_the_directory_overview_leaves_out_sessions_older_than_the_recent_window(server, tokens):
    [old] = scored_times(stream_session(server.port, tokens, "p7-old", "p7", 1, seed=8))
    # The dashboard's clock stands just past the end of p7-old's window: p7-old is too old for the
    # overview, while any score from now on is recent.
    clock = ManualClock(old + 2.0 + 0.001)
    with dashboard_for(server.port, tokens.by_name["admin"], [], clock=clock, discover_interval=0.2,
                       recent_seconds=2.0) as dashboard:
        directory_rounds(dashboard, 3)
        assert rows(dashboard) == {}
        [fresh] = scored_times(stream_session(server.port, tokens, "p7-fresh", "p7", 1, seed=9, finish=False))
        assert fresh > clock() - 2.0
        wait_for(lambda: "p7-fresh" in rows(dashboard), what="p7-fresh")
        assert "p7-old" not in rows(dashboard)
        # the participant's page still has the whole history
        participant = next(p for p in overview(dashboard)["connection"]["participants"] if p["participant_id"] == "p7")
        wait_for(lambda: len(get_json(f"{dashboard.url}api/p/{participant['ref']}")["sessions"]) == 2,
                 what="p7's two sessions")
        # once its latest score is older than the window, the session leaves the overview
        clock.advance(fresh + 2.0 + 0.001 - clock())
        wait_for(lambda: "p7-fresh" not in rows(dashboard), what="p7-fresh to leave the overview")


def test_discovery_reports_a_rejected_token(server, tokens):
    with dashboard_for(server.port, "not-a-token", [], discover_interval=0.3) as dashboard:
        wait_for(lambda: overview(dashboard)["connection"]["token_error"], what="the token problem")
        assert "rejected the dashboard's token" in overview(dashboard)["connection"]["token_error"]


def test_a_bad_token_is_reported_plainly(server, tokens):
    with dashboard_for(server.port, "not-a-real-token", ["p1"]) as dashboard:
        state = wait_for(lambda: (p := participant_state(dashboard, "p1"))["state"] == "token rejected" and p,
                         what="the token to be rejected")
        assert "rejected the dashboard's token" in state["message"]
        assert "rejected the dashboard's token" in overview(dashboard)["connection"]["token_error"]
        assert overview(dashboard)["sessions"] == []
        assert httpx.get(dashboard.url, timeout=10).status_code == 200


# ---------------------------------------------------------------------------- event stream


def test_event_stream_sends_a_snapshot_then_each_score_live_in_order(server, tokens):
    stream_session(server.port, tokens, "earlier", "p1", 1, seed=4)
    with dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1"]) as dashboard:
        wait_for(lambda: overview(dashboard)["sessions"], what="history")
        reader = SseReader(dashboard.url + "events")
        try:
            wait_for(lambda: reader.of("snapshot"), what="the snapshot")
            assert reader.content_type.startswith("text/event-stream")
            [snapshot] = reader.of("snapshot")
            assert [s["session_id"] for s in snapshot["sessions"]] == ["earlier"]
            assert snapshot["settings"]["notice"] == SCREENING_NOTICE
            stream_session(server.port, tokens, "live-one", "p1", 3, seed=5)
            wait_for(lambda: len(reader.of("score")) >= 3, what="three live scores")
            scores = reader.of("score")
            assert [s["point"]["segments"] for s in scores] == [1, 2, 3]
            assert {s["session"]["session_id"] for s in scores} == {"live-one"}
            assert all(s["point"]["model_version"] == server.model_version for s in scores)
            # finished only if the dashboard's state check saw the End before this score's event went out
            assert scores[-1]["session"]["segments"] == 3 and scores[-1]["session"]["state"] in ("streaming",
                                                                                                 "finished")
        finally:
            reader.close()
        assert reader.error is None, reader.error


def test_session_event_stream_carries_only_that_session(server, tokens):
    stream_session(server.port, tokens, "watched", "p1", 1, seed=6, finish=False)
    with dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1"]) as dashboard:
        wait_for(lambda: overview(dashboard)["sessions"], what="history")
        reader = SseReader(dashboard.session_url("watched") + "/events")
        try:
            wait_for(lambda: reader.of("snapshot"), what="the snapshot")
            assert [p["seq"] for p in reader.of("snapshot")[0]["points"]] == [0]
            stream_session(server.port, tokens, "other", "p1", 2, seed=7)
            stream_session(server.port, tokens, "watched", "p1", 2, seed=8, first_seq=1)
            wait_for(lambda: len(reader.of("score")) >= 2, what="the watched session's scores")
            # Its end reaches this stream (at least one 0.3 s state check after its last score) behind
            # every event the feed published before it, the other session's included.
            wait_for(lambda: latest_state(reader) == "finished", what="the watched session to finish")
            assert [(s["session"]["session_id"], s["point"]["seq"]) for s in reader.of("score")] == [
                ("watched", 1), ("watched", 2)]
            assert {s["session"]["session_id"] for s in reader.of("session")} <= {"watched"}
        finally:
            reader.close()


def test_unreachable_server_is_a_connection_state_and_the_feed_resumes_without_duplicates(model, redis_url, tokens):
    port = free_port()
    with dashboard_for(port, tokens.by_name["reader-p1"], ["p1"]) as dashboard:
        wait_for(lambda: overview(dashboard)["connection"]["server"]["state"] == "unreachable",
                 what="the server to show as unreachable")
        assert participant_state(dashboard, "p1")["state"] == "reconnecting"
        assert httpx.get(dashboard.url, timeout=10).status_code == 200  # the page still works
        config = dict(checkpoint="", redis_url=redis_url, host="127.0.0.1", port=port, tokens_file=tokens.path,
                      precision="fp32", max_batch=1)
        with BackgroundServer(ServerConfig(**config), model) as first:
            wait_for(lambda: overview(dashboard)["connection"]["server"]["state"] == "connected",
                     timeout=30, what="the server to show as connected")
            stream_session(first.port, tokens, "across", "p1", 2, seed=9, finish=False)
            wait_for(lambda: (s := overview(dashboard)["sessions"]) and s[0]["segments"] == 2, what="2 segments")
        wait_for(lambda: overview(dashboard)["connection"]["server"]["state"] == "unreachable",
                 what="the stopped server to show as unreachable")
        with BackgroundServer(ServerConfig(**config), model) as second:
            stream_session(second.port, tokens, "across", "p1", 2, seed=10, first_seq=2)
            wait_for(lambda: (s := overview(dashboard)["sessions"]) and s[0]["segments"] == 4, timeout=30,
                     what="4 segments after the restart")
            ref = overview(dashboard)["sessions"][0]["ref"]
            assert [p["seq"] for p in get_json(f"{dashboard.url}api/s/{ref}")["points"]] == [0, 1, 2, 3]
            assert participant_state(dashboard, "p1")["state"] == "following"


def test_an_expected_session_has_a_page_that_fills_in_when_its_first_score_arrives(server, tokens):
    dashboard = dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1"])
    ref = dashboard.feed.expect_session("upcoming", "p1")
    with pytest.raises(ValueError, match="not followed"):
        dashboard.feed.expect_session("elsewhere", "p2")
    with dashboard:
        assert dashboard.session_url("upcoming").endswith("/s/" + ref)
        assert httpx.get(dashboard.session_url("upcoming"), timeout=10).status_code == 200
        waiting = get_json(f"{dashboard.url}api/s/{ref}")
        assert waiting["session"]["waiting"] is True and waiting["points"] == []
        reader = SseReader(dashboard.session_url("upcoming") + "/events")
        try:
            wait_for(lambda: reader.of("snapshot"), what="the snapshot")
            stream_session(server.port, tokens, "upcoming", "p1", 2, seed=12)
            wait_for(lambda: len(reader.of("score")) >= 2, what="the first scores")
            assert [s["point"]["segments"] for s in reader.of("score")] == [1, 2]
            assert "waiting" not in get_json(f"{dashboard.url}api/s/{ref}")["session"]
        finally:
            reader.close()


INTERVAL_FIELDS = ("probability_low", "probability_high", "interval_level")
REPLICATES = [[0.6, 1.4, -0.2], [0.9, 1.1, 0.1], [0.3, 1.8, 0.0], [1.2, 0.7, -0.4], [0.5, 1.0, 0.3]]


@pytest.mark.parametrize("replicates", [REPLICATES, []], ids=["with-interval", "without"])
def test_the_api_carries_each_score_s_interval_and_whether_the_model_gives_one(start_server, tokens, replicates):
    import torch

    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(7)
    server = start_server(model=ScreeningModel(ModelConfig.tiny(calibration_replicates=replicates)).eval())
    stream_session(server.port, tokens, "sess-i", "p1", 2, seed=4)
    with stub_for(server.port) as stub:
        latest = stub.GetScore(pb.GetScoreRequest(session_id="sess-i"), metadata=tokens.metadata("admin"))
    with dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1"]) as dashboard:
        [summary] = wait_for(lambda: [s for s in overview(dashboard)["sessions"] if s["segments"] == 2],
                             what="both scores")
        points = get_json(f"{dashboard.url}api/s/{summary['ref']}")["points"]
        [listed] = get_json(f"{dashboard.url}api/p/{summary['participant_ref']}")["sessions"]
    assert len(points) == 2
    if replicates:
        for name in INTERVAL_FIELDS:
            assert summary[name] == listed[name] == points[-1][name] == pytest.approx(getattr(latest, name))
        assert all(p["probability_low"] <= p["probability"] <= p["probability_high"] for p in points)
        assert summary["model"]["interval_level"] == pytest.approx(0.9)
    else:
        assert all(item[name] is None for item in (summary, listed, *points) for name in INTERVAL_FIELDS)
        assert summary["model"]["interval_level"] is None


# ---------------------------------------------------------------------------- states, speech time, meaning


def test_sessions_read_interrupted_then_finished_with_late_scores_and_gaps_by_cause(start_server, tokens):
    from moodstream.dashboard.view_state import CAUSE_DELAYED, CAUSE_NO_SPEECH

    pcm = make_chunks(3, seed=13, seconds=1.0)
    # The scoring server stamps scores and the dashboard judges lateness on one clock that the test moves.
    clock = ManualClock(time.time())

    def at(seq, start):
        return pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=start, pcm=pcm[seq]))

    with start_server.running(clock=clock) as server, \
            dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1"], clock=clock, late_seconds=1.0,
                          gap_seconds=3.0, idle_seconds=30.0) as dashboard:
        with stub_for(server.port) as stub:
            [first] = scored_times(stream(stub, [header("timeline", "p1"), at(0, 0.0)], tokens.metadata("agent")))
            assert first == clock()

            def interrupted():
                clock.advance(0.02)  # the dashboard checks a quiet session's state once its clock says it is due
                return (s := overview(dashboard)["sessions"]) and s[0]["state"] == "interrupted" and s[0]

            session = wait_for(interrupted, what="the session to read interrupted (no End)")
            # Chunk 1 was recorded 1 s in, but reaches the server 2.5 s after chunk 0 was scored.
            assert clock() < first + 2.5
            clock.advance(first + 2.5 - clock())
            stream(stub, [header("timeline", "p1"), at(1, 1.0), at(2, 10.0), end(2)], tokens.metadata("agent"))
        wait_for(lambda: clock.advance(0.02) or overview(dashboard)["sessions"][0]["state"] == "finished",
                 what="finished after End")
        points = get_json(f"{dashboard.url}api/s/{session['ref']}")["points"]
        assert [p["start_seconds"] for p in points] == [0.0, 1.0, 10.0]
        assert [p["late"] for p in points] == [False, True, False]
        assert points[1]["late_cause"] == CAUSE_DELAYED and points[1]["delay_seconds"] > 1.0
        assert [p["gap_before"] for p in points] == ["", "", CAUSE_NO_SPEECH]  # 8 s without speech after 1-2 s
        summary = overview(dashboard)["sessions"][0]
        assert summary["late_points"] == 1 and summary["state_since"] >= points[-1]["time_unix"]
        # the model does not describe itself (GetModelInfo) and no checkpoint was given: the page says so
        # instead of guessing, with the evidence rule the server gave (one segment, 7 s chunks)
        assert not summary["model"]["described"] and "does not say what it was trained on" in summary["model"]["meaning"]
        assert summary["model"]["evidence"] == {"segments": 1, "seconds": 7.0}
        assert summary["model"]["threshold"] == summary["threshold"]


def test_an_open_session_without_scores_turns_idle_and_raw_errors_stay_apart_from_the_message(server, tokens):
    hang_up = threading.Event()

    def agent():
        yield header("quiet", "p1")
        yield chunk(0, make_chunks(1, seed=14)[0])
        hang_up.wait(30)  # the stream stays open, with nothing more to say

    with stub_for(server.port) as stub:
        call = stub.Stream(agent(), metadata=tokens.metadata("agent"), timeout=60)
        next(r for r in call if r.WhichOneof("message") == "score")
        try:
            with dashboard_for(server.port, tokens.by_name["reader-p1"], ["p1", "p2"], idle_seconds=1.0) as dashboard:
                wait_for(lambda: (s := overview(dashboard)["sessions"]) and s[0]["state"] == "idle",
                         what="idle without scores")
                p2 = wait_for(lambda: (p := participant_state(dashboard, "p2"))["state"] == "not permitted" and p,
                              what="p2 refused")
                assert p2["details"].startswith("PERMISSION_DENIED") and "PERMISSION_DENIED" not in p2["message"]
        finally:
            hang_up.set()
            list(call)
