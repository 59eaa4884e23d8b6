"""What the dashboard serves for the record page: its policy headers, its settings, its app manifest and
service worker."""
import httpx

from moodstream import SCREENING_NOTICE
from moodstream.agent.pipeline import CaptureSettings
from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard


def test_the_record_page_its_settings_manifest_and_service_worker():
    config = FeedConfig(server="127.0.0.1:1", token="read-token", participants=["p1"],
                        record_endpoint="https://scores.example.org:8443")
    dashboard = BackgroundDashboard(config).start()
    try:
        with httpx.Client(base_url=dashboard.url, timeout=10) as web:
            page = web.get("/record")
            settings = web.get("/record/settings.json").json()
            manifest = web.get("/record.webmanifest")
            worker = web.get("/record-service-worker.js")
    finally:
        dashboard.stop()
    assert page.status_code == 200 and "not a diagnosis" in page.text
    policy = page.headers["content-security-policy"]
    assert "connect-src 'self' https://scores.example.org:8443;" in policy
    assert "script-src 'self' 'wasm-unsafe-eval';" in policy
    assert page.headers["permissions-policy"] == "microphone=(self)"
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    assert settings == {"capture": CaptureSettings().as_dict(), "endpoint": "https://scores.example.org:8443",
                        "notice": SCREENING_NOTICE}
    assert manifest.headers["content-type"] == "application/manifest+json"
    assert manifest.json()["start_url"] == "/record" and manifest.json()["display"] == "standalone"
    assert worker.headers["content-type"].startswith("text/javascript") and "caches.open" in worker.text


def test_without_a_record_endpoint_the_page_may_call_only_its_own_origin():
    dashboard = BackgroundDashboard(FeedConfig(server="127.0.0.1:1", token="read-token", participants=["p1"])).start()
    try:
        page = httpx.get(f"{dashboard.url}record", timeout=10)
    finally:
        dashboard.stop()
    assert "connect-src 'self';" in page.headers["content-security-policy"]
