"""The dashboard in a real headless Chromium: Redis + scoring server + dashboard, a session streamed live.

Chromium comes from tests/browser_harness.py; screenshots are kept under artifacts/ (git-ignored).
"""
import json

import pytest

from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from moodstream.model_description import ModelDescription
from moodstream.server.app import BackgroundServer, ServerConfig
from moodstream.v1 import moodstream_pb2 as pb
from browser_harness import (DESKTOP, PHONE, assert_fits, browser, by_id, click, free_port, needs_chromium,  # noqa: F401
                             save_screenshot, set_viewport, severe_console, wait_until)
from clocks import ShiftedClock
from server_harness import end, finished_session, header, make_chunks, stream, stub_for, tiny_model, write_tokens

LATE_SECONDS = 3.0

pytestmark = needs_chromium

# Share of the threshold's canvas row that is drawn red (the dashed line, with its label).
THRESHOLD_SCRIPT = """
const node = document.getElementById(arguments[0]), canvas = node.querySelector('canvas');
const row = Number(node.dataset.thresholdRow);
if (!canvas || !Number.isFinite(row)) return 0;
const data = canvas.getContext('2d').getImageData(0, row, canvas.width, 1).data;
let red = 0;
for (let i = 0; i < data.length; i += 4) if (data[i] > 140 && data[i + 1] < 90 && data[i + 2] < 90) red++;
return red / canvas.width;
"""


# True once a chart is drawn at its container's width: it follows a window resize 100 ms later.
CHART_SIZED_SCRIPT = """
const node = document.getElementById(arguments[0]), canvas = node.querySelector('canvas');
if (!canvas) return false;
return Math.round(canvas.getBoundingClientRect().width) === Math.max(240, Math.floor(node.clientWidth));
"""


def wait_for_chart_size(driver, chart="chart"):
    wait_until(driver, lambda d: d.execute_script(CHART_SIZED_SCRIPT, chart), f"{chart} to follow the resize")


def row_states(driver) -> list[str]:
    """The overview's session states, top to bottom (read in one go: rows are redrawn on every event)."""
    return driver.execute_script("return [...document.querySelectorAll('tr.session-row')]"
                                 ".map((row) => row.dataset.state)")


def chart_points(driver, chart="chart") -> int:
    return int(by_id(driver, chart).get_attribute("data-points"))


def assert_axis_labels_apart(driver, chart="chart"):
    """The x-axis labels drawn on the canvas: at least two, none overlapping, all inside the chart."""
    node = by_id(driver, chart)
    boxes = json.loads(node.get_attribute("data-x-labels"))
    assert len(boxes) >= 2, boxes
    left, right = node.rect["x"], node.rect["x"] + node.rect["width"]
    for (a_left, a_right, a), (b_left, b_right, b) in zip(boxes, boxes[1:]):
        assert a_right + 2 <= b_left, f"x labels {a!r} and {b!r} overlap: {boxes}"
    assert boxes[0][0] >= left - 1 and boxes[-1][1] <= right + 1, (boxes, left, right)
    return boxes


def assert_threshold_drawn(driver, chart="chart"):
    assert driver.execute_script(THRESHOLD_SCRIPT, chart) > 0.3, "no dashed threshold line across the chart"


def shot(driver, name):
    save_screenshot(driver, f"dashboard-{name}")


def test_a_session_through_an_outage_to_its_end_reads_true_at_desktop_and_phone_width(browser, redis_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    tokens = write_tokens(tmp_path)
    model = tiny_model(seed=2)
    port = free_port()
    # One clock for the server's score times, the dashboard and the recording: live pace and the outage are
    # jumps of it, not waits.
    clock = ShiftedClock()
    clock_start = clock()
    server_config = ServerConfig(checkpoint="", redis_url=redis_url, host="127.0.0.1", port=port,
                                 tokens_file=tokens.path, precision="fp32", clock=clock)
    pcm = make_chunks(6, seed=11, seconds=1.0)
    agent = tokens.metadata("agent")

    def record(seq):
        """A chunk as the agent cuts it: its start is when its speech was recorded, on the session clock."""
        return pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=clock() - clock_start, pcm=pcm[seq]))

    server = BackgroundServer(server_config, model).start()
    description = ModelDescription(model_version=server.model_version, threshold=0.5,
                                   training_data="the test suite's synthetic tones",
                                   positive_class="the test's positive class", demo_model=True)
    config = FeedConfig(server=f"127.0.0.1:{port}", token=tokens.by_name["reader-p1"], participants=["p1"],
                        late_seconds=LATE_SECONDS, health_interval=0.5, models=[description])
    dashboard = BackgroundDashboard(config, clock=clock).start()
    try:
        set_viewport(browser, DESKTOP)
        browser.get(dashboard.url)
        assert "p1" not in browser.title
        wait_until(browser, lambda d: "following" in by_id(d, "participants").text, "the participant to be followed")
        assert "not a diagnosis" in browser.find_element(By.CLASS_NAME, "notice").text

        # Two chunks at live pace, then the stream closes without End: the session is interrupted.
        first = [header("ward-visit", "p1", device_id="kiosk-3"), record(0)]
        clock.advance(1.0)
        first.append(record(1))
        with stub_for(port) as stub:
            stream(stub, first, agent)
        # An earlier session with the longest ids the API allows, finished: listed after the interrupted one.
        long_id = "session-" + "x" * 56
        with stub_for(port) as stub:
            stream(stub, [header(long_id, "p1", device_id="d" * 64),
                          pb.StreamRequest(chunk=pb.Chunk(seq=0, pcm=pcm[0])), end(0)], agent)
        wait_until(browser, lambda d: row_states(d) == ["interrupted", "finished"],
                   "the interrupted session first, then the finished one")
        row = browser.find_element(By.CSS_SELECTOR, "tr.session-row")
        assert row.find_element(By.CSS_SELECTOR, "td").text.startswith("interrupted")  # status comes first
        assert "ward-visit" in row.text and "threshold 0.50" in row.text
        assert browser.find_element(By.CSS_SELECTOR, "#sessions th").text == "State"
        assert "Demo model, trained on the test suite's synthetic tones" in by_id(browser, "model-notes").text
        assert_fits(browser, "overview at 1280")
        shot(browser, "overview-1280")

        # The session: threshold value in the tile, the legend and on the chart; what the probability means.
        row.find_element(By.CSS_SELECTOR, "a.session-link").click()
        wait_until(browser, lambda d: chart_points(d) == 2, "two points on the chart")
        assert "/s/" in browser.current_url and "ward-visit" not in browser.current_url
        assert "ward-visit" not in browser.title and "p1" not in browser.title
        assert by_id(browser, "tile-threshold").text == "0.50"
        assert by_id(browser, "legend-threshold").text == "0.50"
        assert "below threshold 0.50" in by_id(browser, "tile-label").text or \
            "above threshold 0.50" in by_id(browser, "tile-label").text
        notes = by_id(browser, "model-notes").text
        assert "the test's positive class" in notes and "Decision threshold: 0.50" in notes
        chart = by_id(browser, "chart")
        assert chart.get_attribute("role") == "img" and "threshold 0.50" in chart.get_attribute("aria-label")
        assert chart.find_element(By.XPATH, "ancestor::figure").find_element(By.TAG_NAME, "figcaption").text
        assert_threshold_drawn(browser)

        # The scoring server goes down; the agent keeps recording and holds its chunks.
        server.stop()
        held = []
        for seq in (2, 3, 4):
            clock.advance(1.0)
            held.append(record(seq))
        banner = wait_until(browser, lambda d: (b := by_id(d, "server-banner")).is_displayed() and b,
                            "the outage banner")
        assert "Data as of" in banner.text and "UNAVAILABLE" not in banner.text  # raw text stays hidden
        assert by_id(browser, "server-pill").text == "server: unreachable"
        assert banner.find_element(By.TAG_NAME, "details").get_attribute("open") is None
        click(browser, "#server-banner details summary", "the outage's details")
        # The page re-renders on every event and every 5 s; an unchanged banner is not rebuilt, so the
        # reader's details stay open (a rebuilt one would close them and go stale under the click).
        toggle = wait_until(browser, lambda d: (t := d.find_element(By.CSS_SELECTOR, "#server-banner details"))
                            .get_attribute("open") is not None and t, "the details to be open")
        assert "UNAVAILABLE" in toggle.text
        shot(browser, "outage-1280")
        clock.advance(max(0.0, LATE_SECONDS + 3.0 - (clock() - clock_start - held[-1].chunk.start_seconds)))

        # It comes back: the held chunks are scored late, then the session goes on live and ends.
        server = BackgroundServer(server_config, model).start()
        with stub_for(port) as stub:
            stream(stub, [header("ward-visit", "p1", device_id="kiosk-3"), *held], agent)
            stream(stub, [header("ward-visit", "p1", device_id="kiosk-3"), record(5), end(5)], agent)
        wait_until(browser, lambda d: chart_points(d) == 6, "six points after the outage", timeout=30)
        wait_until(browser, lambda d: not by_id(d, "server-banner").is_displayed(), "the banner to go")
        chart = by_id(browser, "chart")
        placed = json.loads(chart.get_attribute("data-x"))
        recorded = [first[1].chunk.start_seconds, first[2].chunk.start_seconds,
                    *[r.chunk.start_seconds for r in held]]
        assert placed[:5] == pytest.approx(recorded) and placed == sorted(placed)  # by speech time
        assert chart.get_attribute("data-late") == "3"
        rows = browser.find_elements(By.CSS_SELECTOR, "#points tbody tr")
        assert sum("late" in (r.get_attribute("class") or "") for r in rows) == 3
        assert "late by" in rows[-3].text and "scoring server unreachable" in rows[-3].text
        bands = by_id(browser, "bands").text
        assert "3 scores scored late (scoring server unreachable" in bands, bands
        wait_until(browser, lambda d: by_id(d, "session-state").find_element(By.CSS_SELECTOR, ".state")
                   .get_attribute("data-state") == "finished", "the session to show as finished")
        assert by_id(browser, "session-state").text.startswith("finished")
        assert_fits(browser, "session at 1280")
        assert_axis_labels_apart(browser)
        shot(browser, "session-1280")

        # Phone width: nothing cut off, axis labels apart.
        set_viewport(browser, PHONE)
        browser.refresh()
        wait_until(browser, lambda d: chart_points(d) == 6, "the chart after reload")
        assert_fits(browser, "session at 390")
        assert_axis_labels_apart(browser)
        assert_threshold_drawn(browser)
        assert 200 <= browser.find_element(By.CSS_SELECTOR, "#chart canvas").rect["width"] <= PHONE[0]
        shot(browser, "session-390")
        browser.get(dashboard.url)
        wait_until(browser, lambda d: row_states(d) == ["finished", "finished"], "both sessions finished")
        assert_fits(browser, "overview at 390")
        shot(browser, "overview-390")

        # A one-point session: two minutes of speech time around it, the threshold drawn, labels apart.
        next(link for link in browser.find_elements(By.CSS_SELECTOR, "a.session-link")
             if link.get_attribute("textContent") == long_id).click()
        wait_until(browser, lambda d: chart_points(d) == 1 and by_id(d, "chart").get_attribute("data-x-range"),
                   "the one-point chart")
        low, high = json.loads(by_id(browser, "chart").get_attribute("data-x-range"))
        assert (low, high) == (0, 120)
        assert_axis_labels_apart(browser)
        assert_threshold_drawn(browser)
        assert_fits(browser, "one-point session at 390")
        shot(browser, "one-point-390")

        # Two sessions minutes apart in the history: a day around them, the threshold drawn, labels apart.
        by_id(browser, "participant-link").click()
        wait_until(browser, lambda d: chart_points(d, "history-chart") == 2, "the participant's history")
        for size, name in ((PHONE, "390"), (DESKTOP, "1280")):
            set_viewport(browser, size)
            wait_for_chart_size(browser, "history-chart")
            low, high = json.loads(by_id(browser, "history-chart").get_attribute("data-x-range"))
            assert high - low == pytest.approx(86400)
            assert_axis_labels_apart(browser, "history-chart")
            assert_threshold_drawn(browser, "history-chart")
            assert_fits(browser, f"participant at {name}")
            shot(browser, f"participant-{name}")
        assert "ward-visit" in by_id(browser, "history").text and "p1" not in browser.title

        # Keyboard: the skip link comes first and leads to the content; every table is captioned and reachable.
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        skip = browser.switch_to.active_element
        assert skip.get_attribute("class") == "skip" and skip.is_displayed()
        skip.send_keys(Keys.ENTER)
        assert browser.switch_to.active_element.get_attribute("id") == "main"
        for table in browser.find_elements(By.CSS_SELECTOR, "table"):
            assert table.find_element(By.TAG_NAME, "caption").text
            region = table.find_element(By.XPATH, "..")
            assert region.get_attribute("tabindex") == "0" and region.get_attribute("role") == "region"
        assert not severe_console(browser)

        # The page loses the dashboard itself: its own state, and a banner saying how old the data is.
        dashboard.stop()
        lost = wait_until(browser, lambda d: (b := by_id(d, "page-banner")).is_displayed() and b,
                          "the lost-connection banner")
        assert "Data as of" in lost.text and "lost its connection to the dashboard" in lost.text
        assert by_id(browser, "server-pill").text == "server: unknown"
        assert by_id(browser, "live-pill").text == "this page: reconnecting"
    finally:
        dashboard.stop()
        server.stop()


# Canvas column and rows inside the chart's latest interval band: its height in pixels, and the share of
# it drawn in the band's blue tint (the probability line and the point are blue too).
INTERVAL_BAND_SCRIPT = """
const node = document.getElementById(arguments[0]), canvas = node.querySelector('canvas');
if (!canvas || !node.dataset.intervalProbe) return null;
const [x, top, bottom] = JSON.parse(node.dataset.intervalProbe);
if (bottom - top < 6) return {height: bottom - top, share: 0};
const data = canvas.getContext('2d').getImageData(x, top + 1, 1, bottom - top - 2).data;
let tinted = 0;
for (let i = 0; i < data.length; i += 4) if (data[i + 2] > data[i] + 12) tinted++;
return {height: bottom - top, share: tinted / (data.length / 4)};
"""
REPLICATES = [[0.6, 1.4, -0.2], [0.9, 1.1, 0.1], [0.3, 1.8, 0.0], [1.2, 0.7, -0.4], [0.5, 1.0, 0.3]]
NO_INTERVAL = "This model gives no interval around its scores."


@pytest.mark.parametrize("replicates", [REPLICATES, []], ids=["with-interval", "without"])
def test_each_score_shows_its_interval_as_text_and_a_band_or_the_page_says_once_there_is_none(
        browser, start_server, tokens, replicates):
    import torch
    from selenium.webdriver.common.by import By

    from moodstream.model import ModelConfig, ScreeningModel
    from moodstream.wire import interval_text, score_to_dict

    torch.manual_seed(8)
    server = start_server(model=ScreeningModel(ModelConfig.tiny(calibration_replicates=replicates)).eval())
    shown = interval_text(score_to_dict(finished_session(server.port, tokens, "clinic-visit")))
    assert ("\u2013" in shown) == bool(replicates)
    config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"], participants=["p1"],
                        health_interval=0.5)
    name = "interval" if replicates else "no-interval"
    with BackgroundDashboard(config) as dashboard:
        set_viewport(browser, DESKTOP)
        browser.get(dashboard.url)
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.session-row td.segments")
                   and d.find_element(By.CSS_SELECTOR, "tr.session-row td.segments").text == "3", "all three scores")
        # The overview re-renders on every event: read the cell until it shows the last score.
        wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "tr.session-row td.probability").text == shown,
                   f"the overview to show {shown}")
        notes = by_id(browser, "model-notes").text
        if replicates:
            assert "its 90% interval" in notes and NO_INTERVAL not in notes
        else:
            assert notes.count(NO_INTERVAL) == 1
        shot(browser, f"{name}-overview-1280")

        click(browser, "a.session-link", "the session's link")
        wait_until(browser, lambda d: chart_points(d) == 3, "three points on the chart")
        assert by_id(browser, "tile-probability").text == shown
        cells = [row.find_elements(By.CSS_SELECTOR, "td")[3].text
                 for row in browser.find_elements(By.CSS_SELECTOR, "#points tbody tr")]
        assert cells[0] == shown and all(("(" in cell) == bool(replicates) for cell in cells)
        chart = by_id(browser, "chart")
        assert shown in chart.get_attribute("aria-label")
        legend = by_id(browser, "legend-interval")
        notes = by_id(browser, "model-notes").text
        if replicates:
            assert chart.get_attribute("data-intervals") == "3" and legend.is_displayed()
            band = browser.execute_script(INTERVAL_BAND_SCRIPT, "chart")
            assert band["height"] >= 6 and band["share"] > 0.8, band
        else:
            assert chart.get_attribute("data-intervals") == "0" and not legend.is_displayed()
            assert not chart.get_attribute("data-interval-probe")
            assert notes.count(NO_INTERVAL) == 1
        assert_threshold_drawn(browser)
        shot(browser, f"{name}-session-1280")
        set_viewport(browser, PHONE)
        wait_for_chart_size(browser)
        assert_fits(browser, "session with its interval at 390")
        shot(browser, f"{name}-session-390")
        browser.execute_script("document.getElementById('chart-caption').scrollIntoView()")
        wait_until(browser, lambda d: d.execute_script("return window.scrollY") > 0, "the chart scrolled into view")
        shot(browser, f"{name}-session-chart-390")

        click(browser, "#participant-link", "the participant's link")
        wait_until(browser, lambda d: chart_points(d, "history-chart") == 1, "the participant's history")
        row = browser.find_element(By.CSS_SELECTOR, "#history tbody tr")
        assert shown in row.text
        history = by_id(browser, "history-chart")
        assert history.get_attribute("data-intervals") == ("1" if replicates else "0")
        if replicates:
            band = browser.execute_script(INTERVAL_BAND_SCRIPT, "history-chart")
            assert band["height"] >= 6 and band["share"] > 0.8, band
        assert_fits(browser, "participant with its interval at 390")
        assert not severe_console(browser)


def test_the_dashboard_writes_every_probability_as_the_agent_and_the_demo_do(browser):
    from pathlib import Path

    from moodstream.wire import interval_text

    browser.get("about:blank")
    browser.execute_script((Path(__file__).parents[1] / "dashboard" / "static" / "format.js").read_text())
    cases = [(0.9999, 0.9962, 0.99998), (0.994, 0.976, 0.9971), (1.0, 1.0, 1.0), (0.003, 0.0, 0.011),
             (0.0061, 0.0051, 0.0072), (0.72, 0.61, 0.8), (0.5, None, None)]
    for probability, low, high in cases:
        values = {"probability": probability, "probability_low": low, "probability_high": high}
        shown = browser.execute_script("return window.moodstream.intervalText(arguments[0])", values)
        assert shown == interval_text(values), values
