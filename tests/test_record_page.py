"""What the dashboard serves for the record page: its policy headers, its settings, its app manifest and
service worker."""
import httpx
import torch
from server_harness import running_server, write_tokens

from moodstream import SCREENING_NOTICE
from moodstream.agent.pipeline import CaptureSettings
from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from moodstream.model import ModelConfig, ScreeningModel


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
    # no scoring server to ask: the Python agent's defaults, and the page is told so
    assert settings == {"capture": CaptureSettings().as_dict(), "from_model": False,
                        "endpoint": "https://scores.example.org:8443", "notice": SCREENING_NOTICE}
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


def test_the_record_page_keeps_speech_as_the_served_model_was_trained(redis_url, tmp_path):
    trained_with = CaptureSettings(vad_aggressiveness=3, hangover_ms=450, min_last_chunk_seconds=4.0)
    assert trained_with != CaptureSettings()
    torch.manual_seed(0)
    model = ScreeningModel(ModelConfig.tiny(speech=trained_with.as_dict()))
    tokens = write_tokens(tmp_path)
    with running_server(model, redis_url, tokens) as server:
        config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"],
                            participants=["p1"])
        dashboard = BackgroundDashboard(config).start()
        try:
            settings = httpx.get(f"{dashboard.url}record/settings.json", timeout=10).json()
        finally:
            dashboard.stop()
    assert settings["from_model"] is True
    assert CaptureSettings.from_dict(settings["capture"]) == trained_with
