"""Evidence in plain numbers, layout and states on the dashboard, checked by element geometry in Chromium.

A model that labels a score only from its third segment on (21 s of speech) streams a session one chunk at a
time: before the first score the pages already show the threshold, what the probability means and how much
speech a label needs (from the server's GetModelInfo; the dashboard is given no checkpoint); then each
score says how much speech it had, collecting-speech points are drawn hollow, and the tiles keep their
labels inside at 390, 800, 1280 and 1440 px.
"""
import json

import pytest
import torch

from browser_harness import (DESKTOP, PHONE, browser, by_id, needs_chromium, save_screenshot,  # noqa: F401
                             set_viewport, severe_console, wait_until)
from clocks import ShiftedClock
from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from moodstream.model import ModelConfig, ScreeningModel
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import header, make_chunks, stream, stub_for
from test_dashboard_browser import chart_points, wait_for_chart_size

pytestmark = needs_chromium

WIDTHS = [(390, 844), (800, 900), (1280, 900), (1440, 900)]
RULE = "label after 3 segments / 21 s"

# Every tile's descendants that stick out of it (page px, half a pixel of rounding allowed).
TILE_OVERFLOW_SCRIPT = """
const out = [];
for (const tile of document.querySelectorAll('.tile')) {
  const box = tile.getBoundingClientRect();
  for (const node of tile.querySelectorAll('*')) {
    const r = node.getBoundingClientRect();
    if (!r.width || !r.height) continue;
    if (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5)
      out.push([node.className || node.tagName, node.textContent.slice(0, 40), r.left - box.left, box.right - r.right]);
  }
}
return out;
"""

# The canvas pixel at the centre of each point the chart says it drew: [r, g, b, kind].
POINT_PIXELS_SCRIPT = """
const node = document.getElementById(arguments[0]), canvas = node.querySelector('canvas');
const ctx = canvas.getContext('2d');
return JSON.parse(node.dataset.pointsDrawn || '[]').map(([x, y, kind]) =>
  [...ctx.getImageData(x, y, 1, 1).data.slice(0, 3), kind]);
"""

# Computed style of idle and interrupted badges as the page draws them.
STATE_STYLE_SCRIPT = """
const out = {};
for (const state of ['idle', 'interrupted', 'streaming', 'finished']) {
  const badge = window.moodstream.stateBadge({state: state, state_since: Date.now() / 1000}, false);
  document.getElementById('main').append(badge);
  const s = getComputedStyle(badge);
  out[state] = {weight: s.fontWeight, size: s.fontSize, border: s.borderTopWidth + ' ' + s.borderTopStyle,
                padding: s.paddingLeft, background: s.backgroundColor, color: s.color};
  badge.remove();
}
return out;
"""


def assert_tiles_hold_their_labels(driver, where):
    for size in WIDTHS:
        set_viewport(driver, size)
        sticking_out = driver.execute_script(TILE_OVERFLOW_SCRIPT)
        assert not sticking_out, (where, size, sticking_out)


def test_evidence_is_given_in_segments_and_seconds_before_and_after_the_first_score(browser, start_server, tokens):
    from selenium.webdriver.common.by import By

    torch.manual_seed(5)
    model = ScreeningModel(ModelConfig.tiny(min_evidence_segments=3, training_data="the test's synthetic tones",
                                            positive_class="the test's positive class")).eval()
    server = start_server(model=model)
    clock = ShiftedClock()
    config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"], participants=["p1"],
                        health_interval=0.3)
    pcm = make_chunks(3, seed=6)
    agent = tokens.metadata("agent")

    def send(seq):
        with stub_for(server.port) as stub:
            stream(stub, [header("visit-a", "p1"), pb.StreamRequest(chunk=pb.Chunk(
                seq=seq, start_seconds=9.0 * seq, pcm=pcm[seq]))], agent)

    with BackgroundDashboard(config, clock=clock) as dashboard:
        # Before any score: the threshold, the meaning sentence and the evidence rule, from GetModelInfo.
        set_viewport(browser, DESKTOP)
        browser.get(dashboard.url)
        notes = wait_until(browser, lambda d: (n := by_id(d, "model-notes")).is_displayed() and n.text,
                           "the model's notes before any score")
        assert "the test's positive class" in notes and "Decision threshold: 0.50" in notes, notes
        assert "3 segments / 21 s of speech" in notes and "drawn hollow" in notes, notes
        dashboard.feed.expect_session("visit-a", "p1")
        browser.get(dashboard.session_url("visit-a"))
        wait_until(browser, lambda d: by_id(d, "tile-threshold").text == "0.50", "the threshold before any score")
        assert by_id(browser, "legend-threshold").text == "0.50"
        assert by_id(browser, "tile-label").text == "collecting speech " + RULE + "; 0 segments / 0 s so far"
        assert "the test's positive class" in by_id(browser, "model-notes").text

        # One 7 s chunk: collecting speech, with how much there is against how much is needed.
        send(0)
        browser.get(dashboard.url)
        label = wait_until(browser, lambda d: (c := d.find_elements(By.CSS_SELECTOR, "tr.session-row td"))
                           and c[4].text, "the first score's row")
        assert label == "collecting speech " + RULE + "; 1 segment / 7 s so far"
        assert browser.find_element(By.CSS_SELECTOR, "tr.session-row td.speech").text == "7 s"
        assert [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#sessions th")][6] == "Speech"
        browser.get(dashboard.session_url("visit-a"))
        wait_until(browser, lambda d: chart_points(d) == 1, "the first point")
        assert by_id(browser, "tile-speech").text == "7 s"
        assert by_id(browser, "tile-label").text == "collecting speech " + RULE + "; 1 segment / 7 s so far"
        assert_tiles_hold_their_labels(browser, "collecting speech")
        save_screenshot(browser, "dashboard-collecting-1440")

        # Two more: the third carries a label; the first two stay hollow on the chart.
        send(1)
        send(2)
        set_viewport(browser, DESKTOP)
        wait_until(browser, lambda d: chart_points(d) == 3, "three points")
        wait_until(browser, lambda d: "threshold 0.50" in by_id(d, "tile-label").text, "the label from segment 3")
        assert by_id(browser, "tile-speech").text == "21 s"
        chart = by_id(browser, "chart")
        assert "session clock" in chart.get_attribute("data-x-axis")
        assert "speech" not in chart.get_attribute("data-x-axis")  # the axis is the clock, not the speech
        speech = by_id(browser, "chart-speech").text
        assert speech.startswith("Speech scored: 21 s in 3 segments, over 0:18 on the session clock"), speech
        pixels = wait_until(browser, lambda d: len(p := d.execute_script(POINT_PIXELS_SCRIPT, "chart")) == 3 and p,
                            "three points drawn")
        kinds = sorted(pixels, key=lambda pixel: pixel[3])
        assert [k[3] for k in kinds] == ["collecting", "collecting", "labelled"], pixels
        for r, g, b, kind in pixels:
            if kind == "collecting":
                assert min(r, g, b) > 200, ("a collecting point is hollow", pixels)
            else:
                assert b > r + 60 and b > g + 60, ("a labelled point is filled", pixels)
        legend = browser.find_element(By.CSS_SELECTOR, "#chart ~ .legend").text
        assert "collecting speech: too little for a label yet" in legend
        rows = browser.find_elements(By.CSS_SELECTOR, "#points tbody tr")
        assert "1 segment / 7 s so far" in rows[-1].text and "threshold 0.50" in rows[0].text

        # The threshold's text sits clear of its dashed line, at desktop and phone width.
        for size in (DESKTOP, PHONE):
            set_viewport(browser, size)
            wait_for_chart_size(browser)
            node = by_id(browser, "chart")
            row = int(node.get_attribute("data-threshold-row"))
            left, top, right, bottom = json.loads(node.get_attribute("data-threshold-label"))
            assert bottom <= row - 2 or top >= row + 2, (size, row, top, bottom)
            canvas = node.find_element(By.TAG_NAME, "canvas")
            assert 0 <= left < right <= int(canvas.get_attribute("width")), (size, left, right)
            save_screenshot(browser, f"dashboard-evidence-{size[0]}")
        assert_tiles_hold_their_labels(browser, "above or below the threshold")

        # The participant's history says it too.
        by_id(browser, "participant-link").click()
        wait_until(browser, lambda d: chart_points(d, "history-chart") == 1, "the participant's history")
        assert "21 s" in browser.find_element(By.CSS_SELECTOR, "#history tbody tr").text

        # Idle and interrupted carry the same weight; only their colours differ.
        styles = browser.execute_script(STATE_STYLE_SCRIPT)
        idle, interrupted = styles["idle"], styles["interrupted"]
        for key in ("weight", "size", "border", "padding"):
            assert idle[key] == interrupted[key], (key, styles)
        assert idle["border"].endswith("solid") and idle["background"] != "rgba(0, 0, 0, 0)", styles
        assert idle["color"] != interrupted["color"]

        # During an outage every state reads as the last one known.
        browser.get(dashboard.session_url("visit-a"))
        wait_until(browser, lambda d: chart_points(d) == 3, "the session again")
        server.stop()
        badge = wait_until(browser, lambda d: (b := d.find_element(By.CSS_SELECTOR, "#session-state .state"))
                           .text.startswith("last known: ") and b, "the state as last known")
        assert badge.text == "last known: " + badge.get_attribute("data-state") or \
            badge.text.startswith("last known: " + badge.get_attribute("data-state") + " ")
        assert not severe_console(browser)
