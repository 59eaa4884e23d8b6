"""Enrolment: `moodstream token create --record-page` makes the participant's link and its QR code, and
the QR code (saved and drawn in the terminal) reads back, with an independent decoder, to the link. The
link holds a single-use enrolment code, never the token."""
import json
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import zxingcpp
from PIL import Image

from moodstream.compose.cli import main
from moodstream.record_link import record_link
from moodstream.server.enrolment import DEFAULT_ENROL_MINUTES, code_digest

PAGE = "https://clinic.example.org/record"


def decoded(image: np.ndarray) -> list[str]:
    """The texts of the QR codes found in an 8-bit grey image (dark modules dark)."""
    return [found.text for found in zxingcpp.read_barcodes(image) if found.format == zxingcpp.BarcodeFormat.QRCode]


def terminal_image(drawing: str, scale: int = 6) -> np.ndarray:
    """The terminal drawing back as pixels: two modules a character, a full block light on both."""
    light = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}
    rows = []
    for line in drawing.strip("\n").split("\n"):
        pairs = [light[char] for char in line]
        rows += [[top for top, _ in pairs], [bottom for _, bottom in pairs]]
    modules = np.array(rows, dtype=np.uint8) * 255
    return np.kron(modules, np.ones((scale, scale), dtype=np.uint8))


def create(tmp_path, capsys, *options):
    try:
        code = main(["token", "create", "--tokens", str(tmp_path / "tokens.json"), "--name", "phone-p001", *options])
    except SystemExit as exit:  # argparse refused an option's value, with its usage line
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_token_with_a_record_page_prints_its_link_and_a_qr_code_that_reads_back_to_it(tmp_path, capsys):
    code, out, err = create(tmp_path, capsys, "--stream", "p001", "--record-page", PAGE, "--qr",
                            str(tmp_path / "p001.png"))
    assert code == 0
    token = out.strip()  # stdout still holds the token alone, for scripts
    link = next(line for line in err.splitlines() if line.startswith(PAGE))
    parts = urlsplit(link)
    assert parts._replace(fragment="").geturl() == PAGE and not parts.query
    [code] = parse_qs(parts.fragment)["enrol"]
    assert parse_qs(parts.fragment) == {"enrol": [code]}  # only in the fragment, which no server receives
    assert token not in link and token not in err  # the link carries the code alone, never the token

    saved = np.array(Image.open(tmp_path / "p001.png").convert("L"))
    assert decoded(saved) == [link]
    drawing = err[err.index(link) + len(link):err.index("QR code saved")]
    assert decoded(terminal_image(drawing)) == [link]
    tokens = json.loads((tmp_path / "tokens.json").read_text())
    assert token not in json.dumps(tokens) and code not in json.dumps(tokens)  # hashes and a sealed token only
    [enrolment] = tokens["enrolments"]
    assert enrolment["sha256"] == code_digest(code) and enrolment["participant"] == "p001"
    assert abs(enrolment["expires_unix"] - (time.time() + DEFAULT_ENROL_MINUTES * 60)) < 60
    assert "it enrols one device, once, until " in err and f"(--enrol-minutes {DEFAULT_ENROL_MINUTES})" in err


def test_enrol_minutes_sets_how_long_the_code_works(tmp_path, capsys):
    code, _, err = create(tmp_path, capsys, "--stream", "p001", "--record-page", PAGE, "--enrol-minutes", "15")
    assert code == 0 and "(--enrol-minutes 15)" in err
    [enrolment] = json.loads((tmp_path / "tokens.json").read_text())["enrolments"]
    assert abs(enrolment["expires_unix"] - (time.time() + 15 * 60)) < 60


def test_the_qr_code_can_be_saved_as_svg(tmp_path, capsys):
    code, _, err = create(tmp_path, capsys, "--stream", "p001", "--record-page", PAGE, "--qr",
                          str(tmp_path / "p001.svg"))
    assert code == 0 and "QR code saved to" in err
    svg = (tmp_path / "p001.svg").read_text()
    assert "<svg" in svg and "</svg>" in svg


@pytest.mark.parametrize("options, reason", [
    (["--stream", "p001", "--record-page", "http://clinic.example.org/record"], "must be https"),
    (["--stream", "p001", "--record-page", "https://clinic.example.org/dashboard"], "does not end in /record"),
    (["--stream", "p001", "--record-page", "clinic.example.org/record"], "is not a web address"),
    (["--stream", "p001", "--record-page", PAGE + "?x=1"], "query or fragment"),
    (["--stream", "p001,p002", "--record-page", PAGE], "one participant"),
    (["--stream", "*", "--record-page", PAGE], "one participant"),
    (["--read", "p001", "--record-page", PAGE], "one participant"),
    (["--stream", "p001", "--qr", "p001.png"], "--qr needs --record-page"),
    (["--stream", "p001", "--record-page", PAGE, "--qr", "p001.jpg"], ".svg or .png"),
    (["--stream", "p001", "--enrol-minutes", "15"], "--enrol-minutes needs --record-page"),
    (["--stream", "p001", "--record-page", PAGE, "--enrol-minutes", "0"], "minutes above 0"),
    (["--stream", "p001", "--record-page", PAGE, "--enrol-minutes", "soon"], "is not a number of minutes"),
])
def test_a_bad_enrolment_request_is_one_clear_line_and_creates_no_token(tmp_path, capsys, options, reason):
    code, out, err = create(tmp_path, capsys, *options)
    assert code != 0 and out == ""
    assert reason in err and "Traceback" not in err
    assert not (tmp_path / "tokens.json").exists()


def test_the_link_keeps_the_dashboard_root_and_allows_plain_http_on_this_machine_only():
    assert record_link("https://clinic.example.org/moodstream/record/", "c0de") == (
        "https://clinic.example.org/moodstream/record#enrol=c0de")
    assert record_link("http://127.0.0.1:8080/record", "c0de") == "http://127.0.0.1:8080/record#enrol=c0de"
    assert record_link("http://localhost/record", "c0de").startswith("http://localhost/record#")
    with pytest.raises(ValueError, match="must be https"):
        record_link("http://192.168.1.5/record", "c0de")
