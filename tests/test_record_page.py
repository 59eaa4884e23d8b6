"""What the dashboard serves for the record page: its policy headers, its settings, its app manifest and
service worker."""
import httpx
import torch
from server_harness import running_server, write_tokens

from moodstream.wire import SESSION_ID_METADATA_KEY
from moodstream import SCREENING_NOTICE
from moodstream.speech import CaptureSettings
from moodstream.dashboard.app import GZIP_MINIMUM_BYTES
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
    # no scoring server to ask: the Python agent's defaults, and the page is told so; the page sends each
    # call's session id under the key the server and the load balancers read
    assert settings == {"capture": CaptureSettings().as_dict(), "from_model": False,
                        "endpoint": "https://scores.example.org:8443", "notice": SCREENING_NOTICE,
                        "session_metadata_key": SESSION_ID_METADATA_KEY}
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


def test_what_the_record_page_loads_goes_gzip_compressed_to_browsers_that_accept_it_and_streams_stay_plain():
    import gzip
    import re
    from pathlib import Path

    static = Path(__file__).resolve().parents[1] / "dashboard" / "static"
    worker_source = (static / "record" / "service-worker.js").read_text()
    precached = re.findall(r'"((?:record|vendor)/[^"]+|favicon\.svg)"', worker_source.split("PRECACHED = [")[1].split("]")[0])
    assert "vendor/fvad.wasm" in precached and "record/record.js" in precached
    paths = ["/record", "/record/settings.json", "/record.webmanifest", "/record-service-worker.js",
             *(f"/static/{name}" for name in precached)]
    config = FeedConfig(server="127.0.0.1:1", token="read-token", participants=["p1"],
                        record_endpoint="https://scores.example.org:8443")
    dashboard = BackgroundDashboard(config).start()
    sizes = {}
    try:
        with httpx.Client(base_url=dashboard.url, timeout=10) as web:
            for path in paths:
                plain = web.get(path, headers={"accept-encoding": "identity"})
                with web.stream("GET", path, headers={"accept-encoding": "gzip"}) as response:
                    packed = b"".join(response.iter_raw())
                    headers = response.headers
                assert plain.status_code == 200 and "content-encoding" not in plain.headers, path
                sizes[path] = (len(packed), len(plain.content))
                if len(plain.content) < GZIP_MINIMUM_BYTES:
                    assert "content-encoding" not in headers and packed == plain.content, path
                    continue
                assert headers["content-encoding"] == "gzip" and "accept-encoding" in headers["vary"].lower(), path
                assert gzip.decompress(packed) == plain.content, path
                if path.startswith("/static/"):
                    assert plain.content == (static / path.removeprefix("/static/")).read_bytes(), path
            with web.stream("GET", "/events", headers={"accept-encoding": "gzip"}) as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                assert "content-encoding" not in events.headers  # each event leaves at once
    finally:
        dashboard.stop()
    packed_total, plain_total = map(sum, zip(*sizes.values()))
    print({"gzip_bytes": packed_total, "identity_bytes": plain_total, "by_path": sizes})
    compressed = {path: size for path, size in sizes.items() if size[1] >= GZIP_MINIMUM_BYTES}
    assert len(compressed) >= 8 and all(packed < plain for packed, plain in compressed.values()), sizes
    assert packed_total < 0.6 * plain_total, sizes
