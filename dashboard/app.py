"""The dashboard's web app (Starlette): three pages, a JSON API and server-sent events.

    /                  live and recent sessions, and the state of every followed participant
    /s/{ref}           one session: its score per segment over time
    /p/{ref}           one participant: the scores of their sessions across days
    /record            the participant's page: records speech on their device and sends it (no score)
    /api/...           the same data as JSON
    .../events         server-sent events: a snapshot, then every change as it happens

URLs carry only opaque refs (keyed hashes of the ids), so access logs and
browser histories hold no participant or session id. Every page loads its
scripts and styles from this app (Content-Security-Policy 'self'); nothing
comes from a CDN.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from moodstream import SCREENING_NOTICE, __version__
from moodstream.speech import CaptureSettings
from moodstream.wire import SESSION_ID_METADATA_KEY
from moodstream.dashboard.feed import FeedConfig, ScoreFeed

HERE = Path(__file__).resolve().parent
GZIP_MINIMUM_BYTES = 500  # smaller answers go as they are: gzip's own header and trailer would eat the gain
GZIP_LEVEL = 6  # within 0.2 % of level 9's size on the dashboard's static files, in three quarters of the time
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
KEEPALIVE_SECONDS = 15.0

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the security headers to every HTTP response (pure ASGI: streaming stays streaming)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def record_security_policy(endpoint: str) -> bytes:
    """The record page's policy: it may also call the scoring server's gRPC-web port and compile the VAD's
    WebAssembly."""
    parts = urlsplit(endpoint)
    origin = f" {parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{origin}; object-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'").encode()


def asset_versions() -> dict[str, str]:
    """Content hashes for cache-busting query strings on the static files."""
    versions = {}
    for path in STATIC.rglob("*"):
        if path.is_file():
            versions[path.relative_to(STATIC).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return versions


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def create_app(config: FeedConfig, feed: ScoreFeed | None = None) -> Starlette:
    """The ASGI app; it starts and stops its ScoreFeed with the server's lifespan."""
    feed = feed or ScoreFeed(config)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    versions = asset_versions()

    def asset(request: Request, name: str) -> str:
        root = request.scope.get("root_path", "")
        return f"{root}/static/{name}?v={versions.get(name, __version__)}"

    templates.env.globals["notice"] = SCREENING_NOTICE

    def page(request: Request, template: str, *, view: str, title: str, events: str, ref: str = "",
             status: int = 200, **extra) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        context = {"view": view, "title": title, "events_url": f"{root}{events}" if events else "", "ref": ref,
                   "root": root, "asset": lambda name: asset(request, name), "server": config.server, **extra}
        return templates.TemplateResponse(request, template, context, status_code=status)

    # ------------------------------------------------------------ pages
    async def overview_page(request: Request) -> Response:
        return page(request, "overview.html", view="overview", title="Sessions", events="/events")

    async def session_page(request: Request) -> Response:
        ref = request.path_params["ref"]
        detail = feed.session_detail(ref)
        if detail is None:
            return page(request, "missing.html", view="missing", title="Unknown session", events="",
                        status=404, what="session")
        return page(request, "session.html", view="session", title="Session", events=f"/s/{ref}/events", ref=ref)

    async def participant_page(request: Request) -> Response:
        ref = request.path_params["ref"]
        if feed.participant_detail(ref) is None:
            return page(request, "missing.html", view="missing", title="Unknown participant", events="",
                        status=404, what="participant")
        return page(request, "participant.html", view="participant", title="Participant",
                    events=f"/p/{ref}/events", ref=ref)

    async def record_page(request: Request) -> Response:
        response = page(request, "record.html", view="record", title="Record", events="")
        response.headers["content-security-policy"] = record_security_policy(config.record_endpoint).decode()
        response.headers["permissions-policy"] = "microphone=(self)"
        return response

    async def record_settings(request: Request) -> Response:
        # The served model's speech settings (one speech path); the agent's defaults when it records none
        # or the server cannot be asked, as the Python agent does.
        speech = await feed.model_speech_settings()
        capture = CaptureSettings.from_dict(speech) if speech else CaptureSettings()
        return JSONResponse({"capture": capture.as_dict(), "from_model": speech is not None,
                             "endpoint": config.record_endpoint, "notice": SCREENING_NOTICE,
                             "session_metadata_key": SESSION_ID_METADATA_KEY})

    async def record_manifest(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return JSONResponse({
            "name": "moodstream recorder", "short_name": "moodstream", "start_url": f"{root}/record",
            "scope": f"{root}/record", "display": "standalone", "background_color": "#f9fafb",
            "theme_color": "#1d4ed8", "description": f"Records speech for your clinician. {SCREENING_NOTICE}",
            "icons": [{"src": asset(request, "favicon.svg"), "sizes": "any", "type": "image/svg+xml"}],
        }, media_type="application/manifest+json")

    async def record_service_worker(request: Request) -> Response:
        # Served from the app's root so that its scope may be /record (a worker's scope cannot be above it).
        return Response((STATIC / "record" / "service-worker.js").read_bytes(), media_type="text/javascript")

    # ------------------------------------------------------------ JSON
    def not_found(what: str) -> JSONResponse:
        return JSONResponse({"error": f"no such {what} on this dashboard", "notice": SCREENING_NOTICE},
                            status_code=404)

    async def overview_json(request: Request) -> Response:
        return JSONResponse(feed.overview())

    async def session_json(request: Request) -> Response:
        detail = feed.session_detail(request.path_params["ref"])
        return JSONResponse(detail) if detail is not None else not_found("session")

    async def participant_json(request: Request) -> Response:
        detail = feed.participant_detail(request.path_params["ref"])
        return JSONResponse(detail) if detail is not None else not_found("participant")

    async def health(request: Request) -> Response:
        connection = feed.connection()
        return JSONResponse({"status": "ok", "server": connection["server"]["state"],
                             "participants": {p["ref"]: p["state"] for p in connection["participants"]}})

    # ------------------------------------------------------------ events
    def event_stream(snapshot, wanted) -> StreamingResponse:
        """Snapshot first, then the feed's events that `wanted` accepts; taken atomically on this loop."""
        listener = feed.listen()
        first = snapshot()

        async def body():
            try:
                yield sse("snapshot", first)
                while True:
                    event = await listener.next(KEEPALIVE_SECONDS)
                    if event is None:
                        yield ": keepalive\n\n"
                    elif event["type"] == "close":
                        return
                    elif event["type"] == "resync":
                        current = snapshot()
                        if current is None:
                            return
                        yield sse("snapshot", current)
                    elif event["type"] == "connection":
                        yield sse("connection", {"connection": event["connection"], "settings": feed.settings()})
                    elif not wanted(event):
                        continue
                    elif event["type"] == "session":
                        yield sse("session", {"session": event["session"], "settings": feed.settings()})
                    else:
                        yield sse("score", {"session": event["session"], "point": event["point"],
                                            "settings": feed.settings()})
            finally:
                feed.unlisten(listener)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def overview_events(request: Request) -> Response:
        return event_stream(feed.overview, lambda event: True)

    async def session_events(request: Request) -> Response:
        ref = request.path_params["ref"]
        if feed.session_detail(ref) is None:
            return not_found("session")
        return event_stream(lambda: feed.session_detail(ref), lambda event: event["session_ref"] == ref)

    async def participant_events(request: Request) -> Response:
        ref = request.path_params["ref"]
        state = feed.participants_by_ref.get(ref)
        if state is None:
            return not_found("participant")
        return event_stream(lambda: feed.participant_detail(ref),
                            lambda event: event["participant_id"] == state.participant_id)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await feed.start()
        try:
            yield
        finally:
            await feed.stop()

    routes = [
        Route("/", overview_page),
        Route("/s/{ref:str}", session_page),
        Route("/p/{ref:str}", participant_page),
        Route("/record", record_page),
        Route("/record/settings.json", record_settings),
        Route("/record.webmanifest", record_manifest),
        Route("/record-service-worker.js", record_service_worker),
        Route("/events", overview_events),
        Route("/s/{ref:str}/events", session_events),
        Route("/p/{ref:str}/events", participant_events),
        Route("/api/overview", overview_json),
        Route("/api/s/{ref:str}", session_json),
        Route("/api/p/{ref:str}", participant_json),
        Route("/healthz", health),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.feed = feed
    # Pages, scripts, styles and the VAD's WebAssembly go gzip-compressed to browsers that accept it, for
    # phones on slow networks. Starlette leaves the live event streams, images and anything already
    # compressed as they are.
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=GZIP_LEVEL)
    app.add_middleware(SecurityHeaders)
    return app
