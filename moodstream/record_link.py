"""The link that enrols a participant's device on the record page, and its QR code.

The link carries a single-use, short-lived enrolment code, never the token: a browser keeps every link
it opened in its history, and a used or expired code found there is worth nothing. The code travels in
the URL fragment (after `#`), which a browser never sends to a server, so it reaches no access log
either; the page trades it once for the token (the Enrol RPC) and keeps the token on the device
(docs/record.md).
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TextIO
from urllib.parse import urlencode, urlsplit


# Medium error correction (15 % of the code may be damaged): a link of ~120 characters stays a small code
# that a phone reads from a screen or a printout.
QR_ERROR_LEVEL = "m"
QR_FORMATS = (".svg", ".png")


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ENROL_FIELD = "enrol"  # the fragment's field that holds the code; dashboard/static/record/enrolment.js reads it


def record_link(page: str, code: str) -> str:
    """`page` (the record page's address) with the enrolment code in its fragment.

    ValueError with the reason if the page is not an https address ending in /record (a phone's
    browser opens the microphone only on an HTTPS page; plain http is accepted for this machine only).
    """
    parts = urlsplit(page)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"--record-page {page!r} is not a web address; give the record page's address, "
                         "e.g. https://clinic.example.org/record")
    if parts.scheme == "http" and not _is_local(parts.hostname):
        raise ValueError(f"--record-page {page!r} must be https: a phone's browser opens the microphone only on "
                         "an HTTPS page (http works for localhost only)")
    if not parts.path.rstrip("/").endswith("/record"):
        raise ValueError(f"--record-page {page!r} does not end in /record; give the record page's address, "
                         "e.g. https://clinic.example.org/record")
    if parts.query or parts.fragment:
        raise ValueError(f"--record-page {page!r} has a query or fragment; give the page's address alone")
    base = parts._replace(path=parts.path.rstrip("/")).geturl()
    return f"{base}#{urlencode({ENROL_FIELD: code})}"


def qr_code(link: str):
    """The link as a QR code (segno.QRCode)."""
    import segno

    return segno.make(link, error=QR_ERROR_LEVEL, boost_error=False)


def write_qr(link: str, path: Path) -> Path:
    """Save the link's QR code as an SVG or PNG image (by the file's suffix), for print or screen."""
    path = Path(path)
    if path.suffix.lower() not in QR_FORMATS:
        raise ValueError(f"{str(path)!r}: name an .svg or .png file for the QR code")
    qr_code(link).save(str(path), scale=8, border=4)
    return path


def print_qr(link: str, out: TextIO) -> None:
    """Draw the link's QR code with text blocks (light modules as full blocks: read it on a dark terminal)."""
    qr_code(link).terminal(out=out, compact=True)
