"""The session page printed: a one-page summary for the clinic's records, through WebDriver's Print command.

A session whose every score has an interval streams three chunks. Its page, printed at desktop and at phone
width on A4 and on Letter, is one page whose text holds the screening notice, the model version, the decision
threshold, the speech scored and the latest probability with its interval, and whose chart (a canvas) is
drawn as an image inside the page's printable area. The PDF is read back with pypdf.
"""
import io
import unicodedata

import pytest
import torch

from browser_harness import (ARTIFACTS, BROWSERS, DESKTOP, PHONE, by_id, launch, print_pdf, set_viewport,
                             severe_console, wait_until)
from moodstream import SCREENING_NOTICE
from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from moodstream.model import ModelConfig, ScreeningModel
from moodstream.wire import interval_text, score_to_dict
from server_harness import finished_session
from test_dashboard_browser import REPLICATES, chart_points, wait_for_chart_size

pypdf = pytest.importorskip("pypdf", reason="pypdf is not installed (pip install -e '.[test]')")

PAPER = {"A4": (21.0, 29.7), "Letter": (21.59, 27.94)}  # cm, as WebDriver's Print command takes them
MARGIN_CM = 1.2  # style.css's @page margin
POINTS_PER_CM = 72 / 2.54


def placed_images(page) -> list[tuple[float, float, float, float]]:
    """Each image the page draws, as (left, bottom, right, top) in PDF points: its unit square through the
    transformation in force where it is drawn."""
    boxes = []

    def visit(operator, operands, cm, tm):
        if operator == b"Do":
            a, b, c, d, e, f = cm
            xs = [e, e + a, e + c, e + a + c]
            ys = [f, f + b, f + d, f + b + d]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))

    page.extract_text(visitor_operand_before=visit)
    return boxes


def flat(text: str) -> str:
    """Text as read: whitespace runs as one space, ligatures ("ﬁ") as their letters."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


@pytest.mark.parametrize("name", BROWSERS)
def test_the_session_page_prints_on_one_page_with_its_chart_numbers_and_notice(name, start_server, tokens):
    torch.manual_seed(8)
    server = start_server(model=ScreeningModel(ModelConfig.tiny(calibration_replicates=REPLICATES)).eval())
    latest = finished_session(server.port, tokens, "clinic-visit")
    shown = interval_text(score_to_dict(latest))
    assert "\u2013" in shown  # the latest probability with its interval: "0.48 (0.41–0.55)"
    config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"], participants=["p1"],
                        health_interval=0.5)
    with BackgroundDashboard(config) as dashboard, launch(name) as driver:
        set_viewport(driver, DESKTOP)
        driver.get(dashboard.session_url("clinic-visit"))
        wait_until(driver, lambda d: chart_points(d) == 3 and by_id(d, "tile-probability").text == shown,
                   "the session's three scores")
        threshold = by_id(driver, "tile-threshold").text
        speech = by_id(driver, "tile-speech").text
        assert threshold == "0.50" and speech == "21 s", (threshold, speech)
        assert by_id(driver, "print-summary").text == "Print summary"
        expected = [f"Latest probability {shown}", f"Decision threshold {threshold}", f"Speech scored {speech}",
                    f"Model version {latest.model_version}", "Screening aid, not a diagnosis.",
                    flat(SCREENING_NOTICE), "Speech scored: 21 s in 3 segments"]

        for size in (DESKTOP, PHONE):
            set_viewport(driver, size)
            wait_for_chart_size(driver)
            for paper, (width, height) in PAPER.items():
                where = f"{name}, {size[0]} px wide, on {paper}"
                printed = print_pdf(driver, page_width=width, page_height=height)
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / f"dashboard-summary-{name}-{size[0]}-{paper}.pdf").write_bytes(printed)
                pdf = pypdf.PdfReader(io.BytesIO(printed))
                assert len(pdf.pages) == 1, (where, len(pdf.pages))
                page = pdf.pages[0]
                text = flat(page.extract_text())
                for item in expected:
                    assert item in text, (where, item, text[:1200])
                assert "Recorded at" not in text, (where, "the per-segment table is left out")
                # The chart: the widest image, inside the printable area and at least a third of its width.
                page_width, page_height = float(page.mediabox.width), float(page.mediabox.height)
                margin = MARGIN_CM * POINTS_PER_CM
                boxes = placed_images(page)
                assert boxes, (where, "no image: the chart did not print")
                left, bottom, right, top = max(boxes, key=lambda box: box[2] - box[0])
                assert left >= margin - 1 and right <= page_width - margin + 1, (where, boxes, page_width)
                assert bottom >= margin - 1 and top <= page_height - margin + 1, (where, boxes, page_height)
                assert right - left >= (page_width - 2 * margin) / 3, (where, boxes)
        assert not severe_console(driver)

        # The button opens the browser's print dialog, which a headless browser never closes: checked last, and
        # clicked from a task of its own, since print() holds its caller until the dialog closes.
        driver.execute_script("addEventListener('beforeprint', () => { document.body.dataset.printing = '1'; });"
                              "setTimeout(() => document.getElementById('print-summary').click(), 0);")
        wait_until(driver, lambda d: d.execute_script("return document.body.dataset.printing") == "1",
                   "the button to start printing")
