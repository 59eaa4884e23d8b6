"""Serving the dashboard with uvicorn: in the foreground (the CLI) or on a thread (demo, tests)."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from moodstream.dashboard.app import create_app
from moodstream.dashboard.feed import Clock, FeedConfig, ScoreFeed
from moodstream.listening import listening_socket
from moodstream.model_description import ModelDescription

log = logging.getLogger("moodstream.dashboard")


@dataclass
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080           # 0 = any free port
    access_log: bool = True
    log_level: str = "info"


def bind(web: WebConfig) -> socket.socket:
    sock = listening_socket("--port", web.host, web.port)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


class DashboardServer(uvicorn.Server):
    """uvicorn, ending the open event streams first on shutdown (they would never end by themselves)."""

    def __init__(self, config: uvicorn.Config, feed: ScoreFeed) -> None:
        super().__init__(config)
        self.feed = feed

    async def shutdown(self, sockets=None) -> None:
        self.feed.close_listeners()
        await super().shutdown(sockets)


def uvicorn_server(app, web: WebConfig) -> DashboardServer:
    config = uvicorn.Config(app, log_level=web.log_level, access_log=web.access_log, lifespan="on",
                            timeout_graceful_shutdown=2, log_config=None, proxy_headers=False)
    return DashboardServer(config, app.state.feed)


def serve(feed_config: FeedConfig, web: WebConfig, on_started=None) -> None:
    """Run until SIGINT/SIGTERM (uvicorn handles both)."""
    sock = bind(web)
    app = create_app(feed_config)
    server = uvicorn_server(app, web)
    if on_started is not None:
        on_started(url_of(sock), app.state.feed)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundDashboard:
    """The dashboard on its own thread and event loop.

        with BackgroundDashboard(FeedConfig(...), WebConfig(port=0)) as dashboard:
            print(dashboard.url, dashboard.session_url("s1"))
    """

    def __init__(self, feed_config: FeedConfig, web: WebConfig | None = None, clock: Clock = time.time) -> None:
        self.web = web or WebConfig(port=0, access_log=False, log_level="warning")
        self.feed = ScoreFeed(feed_config, clock)
        self.app = create_app(feed_config, self.feed)
        self._server = uvicorn_server(self.app, self.web)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def session_url(self, session_id: str) -> str:
        return f"{self.url}s/{self.feed.session_ref(session_id)}"

    def start(self, timeout: float = 30.0) -> "BackgroundDashboard":
        self._sock = bind(self.web)
        self.url = url_of(self._sock)
        errors: list[BaseException] = []

        def run() -> None:
            # grpc.aio serves every event loop of a process from one poller, which can still hand this
            # loop a cancelled call's last event after it stopped. A closed loop would print "Event loop
            # is closed" tracebacks on Ctrl-C, so the stopped loop stays open (idle) until the process ends.
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._server.serve(sockets=[self._sock]))
                loop.run_until_complete(loop.shutdown_asyncgens())
            except BaseException as error:  # reported by start()
                errors.append(error)

        self._thread = threading.Thread(target=run, name="dashboard", daemon=True)
        self._thread.start()
        started = threading.Event()
        while not started.wait(0.02):
            if self._server.started:
                break
            if not self._thread.is_alive():
                raise RuntimeError(f"the dashboard did not start: {errors[0] if errors else 'unknown error'}")
            timeout -= 0.02
            if timeout <= 0:
                raise TimeoutError("the dashboard did not start in time")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "BackgroundDashboard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_for_demo(address: str, token: str, sessions: dict[str, str], port: int, say,
                   checkpoint: Path) -> BackgroundDashboard:
    """The dashboard of `moodstream demo --dashboard`: follows the demo participants ({participant: session}),
    opens on the first one's session.

    It prints the read-only token and the command for a second dashboard, so another viewer can join.
    """
    config = FeedConfig(server=address, token=token, participants=list(sessions),
                        models=[ModelDescription.from_checkpoint(checkpoint)])
    dashboard = BackgroundDashboard(config, WebConfig(port=port, access_log=False, log_level="warning"))
    for participant_id, session_id in sessions.items():
        dashboard.feed.expect_session(session_id, participant_id)  # its page works before the first score
    session_id = next(iter(sessions.values()))
    dashboard.start()
    say(f"dashboard: open {dashboard.session_url(session_id)} (all sessions: {dashboard.url})")
    participants = ", ".join(sessions)
    say(f"dashboard: read-only token for this demo (it can read {participants} and nothing else): {token}")
    options = " ".join(f"--participant {participant_id}" for participant_id in sessions)
    say(f"dashboard: a second viewer can run: MOODSTREAM_TOKEN={token} moodstream dashboard --server {address} "
        f"{options} --checkpoint {checkpoint} --port 0")
    return dashboard


def hold(dashboard: BackgroundDashboard, say) -> None:
    """Keep the dashboard up until Ctrl-C or SIGTERM, then stop it."""
    import signal

    def terminate(signum, frame):
        raise KeyboardInterrupt

    # Explicit handlers: a demo started in the background of a script has SIGINT ignored.
    previous = {signum: signal.signal(signum, terminate) for signum in (signal.SIGINT, signal.SIGTERM)}
    say(f"dashboard: still serving {dashboard.url} - press Ctrl-C to stop")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        dashboard.stop()
