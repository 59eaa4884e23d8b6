"""The dashboard with a participant's sessions under two model versions, in a real headless Chromium.

A server on a model folder switches its current version between two sessions; the participant page
charts one version's sessions at a time, with that version's threshold, and switches between them.
"""
import time

from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from server_harness import chunk, end, header, make_chunks, stream, stub_for, tiny_model
from browser_harness import (DESKTOP, PHONE, assert_fits, browser, by_id, needs_chromium,  # noqa: F401
                             set_viewport, wait_until)
from test_dashboard_browser import assert_threshold_drawn, chart_points, shot, wait_for_chart_size
from test_model_repository import info, models_server, set_current
from test_model_repository import wait_for as wait_for_server

pytestmark = needs_chromium


def test_a_participants_sessions_under_two_versions_are_charted_one_version_at_a_time(browser, redis_url, tokens, tmp_path):
    old, new = tiny_model(2), tiny_model(3)
    new.config = new.config.replace(decision_threshold=0.3)
    models = tmp_path / "models"
    old.save_pretrained(models / "v1")
    pcm = make_chunks(2, seed=41, seconds=1.0)
    agent = tokens.metadata("agent")

    def session(name: str) -> None:
        with stub_for(server.port) as stub:
            stream(stub, [header(name, "p1")] + [chunk(s, c) for s, c in enumerate(pcm)] + [end(1)], agent)

    with models_server(models, redis_url, tokens) as server:
        session("before-switch")
        new.save_pretrained(models / "v2")
        set_current(models, "v2")
        with stub_for(server.port) as stub:
            wait_for_server(lambda: info(stub, tokens).model_version == new.model_version, "the switch")
        time.sleep(0.05)
        session("after-switch")
        config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"],
                            participants=["p1"], health_interval=0.5)
        dashboard = BackgroundDashboard(config).start()
        try:
            set_viewport(browser, DESKTOP)
            browser.get(dashboard.url)
            wait_until(browser, lambda d: "following" in by_id(d, "participants").text, "the participant")
            # Lists are redrawn on every event: read and act on them in one script each.
            browser.get(browser.execute_script("return document.querySelector('#participants a').href"))
            wait_until(browser, lambda d: by_id(d, "history-chart").get_attribute("data-model-version")
                       == new.model_version, "the latest session's version on the chart")
            chart = by_id(browser, "history-chart")
            assert chart_points(browser, "history-chart") == 1
            assert by_id(browser, "legend-threshold").text == "0.30"
            assert_threshold_drawn(browser, "history-chart")
            assert by_id(browser, "history-versions").is_displayed()
            pressed = browser.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('#history-versions button')]"
                ".map((b) => [b.dataset.model, b.getAttribute('aria-pressed')]))")
            assert pressed == {old.model_version: "false", new.model_version: "true"}
            rows = by_id(browser, "history").text
            assert "before-switch" in rows and "after-switch" in rows  # the table lists every session

            browser.execute_script(
                "document.querySelector(`#history-versions button[data-model='${arguments[0]}']`).click()",
                old.model_version)
            wait_until(browser, lambda d: chart.get_attribute("data-model-version") == old.model_version,
                       "the other version's sessions")
            assert chart_points(browser, "history-chart") == 1
            assert by_id(browser, "legend-threshold").text == "0.50"
            assert old.model_version in chart.get_attribute("aria-label")
            set_viewport(browser, PHONE)
            wait_for_chart_size(browser, "history-chart")
            assert_fits(browser, "participant with two versions at 390")
            shot(browser, "participant-two-versions-390")
        finally:
            dashboard.stop()

