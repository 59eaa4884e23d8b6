"""Assemble and run a scoring server: model + encoder worker + Redis store + gRPC.

    server = ScoringServer(ServerConfig(checkpoint="ckpt", redis_url=url, port=0))
    server = ScoringServer(ServerConfig(checkpoint=None, models="models", redis_url=url, port=0))
    await server.start()          # server.port is the bound port
    ...
    await server.stop()

Serves moodstream.v1.Screening, grpc.health.v1.Health (readiness: SERVING while
Redis answers; liveness: SERVING while the server runs; server/readiness.py) and
server reflection, so grpcurl can list and call everything without the .proto. With `models` it holds every checkpoint
folder of a model folder and follows it while running (moodstream.server.model_repository).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection as grpc_reflection

from moodstream import SCREENING_NOTICE
from moodstream.server.auth import RELOAD_SECONDS, TokenAuthenticator
from moodstream.server.encoder import BatchingEncoder
from moodstream.server import reflection
from moodstream.server.model_repository import POLL_SECONDS, ModelRepository
from moodstream.server.readiness import LIVENESS_SERVICE, RedisReadiness
from moodstream.server.interceptors import (MalformedRequestInterceptor, SessionMetadataInterceptor,
                                              SingleRequestInterceptor)
from moodstream.server.service import ScreeningService, ServiceSettings
from moodstream.server.redis_connection import connect
from moodstream.server.store import DEFAULT_TTL_SECONDS, SessionStore
from moodstream.v1 import moodstream_pb2, moodstream_pb2_grpc
from moodstream.wire import MAX_MESSAGE_BYTES, MIN_PING_INTERVAL_SECONDS

log = logging.getLogger("moodstream.server")

SERVICE_NAME = moodstream_pb2.DESCRIPTOR.services_by_name["Screening"].full_name


@dataclass
class ConnectionLimits:
    """HTTP/2 connection bounds, so no client can hold server resources indefinitely."""

    max_concurrent_streams: int = 256    # open calls per connection; more wait in the client
    keepalive_seconds: float = 30.0      # ping an idle transport this often...
    keepalive_timeout_seconds: float = 10.0  # ...and drop it when the ping goes unanswered this long
    max_idle_seconds: float = 300.0      # close a connection with no call open this long
    max_age_seconds: float = 3600.0      # then ask every client to reconnect (GOAWAY)...
    max_age_grace_seconds: float = 300.0  # ...and cut its calls that are still open this much later

    def grpc_options(self) -> list[tuple[str, int]]:
        milliseconds = lambda seconds: int(seconds * 1000)  # noqa: E731
        return [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", milliseconds(self.keepalive_seconds)),
            ("grpc.keepalive_timeout_ms", milliseconds(self.keepalive_timeout_seconds)),
            # What bounds an unanswered ping in gRPC core 1.85 (60 s by default); keepalive_timeout_ms alone does not.
            ("grpc.http2.ping_timeout_ms", milliseconds(self.keepalive_timeout_seconds)),
            ("grpc.max_connection_idle_ms", milliseconds(self.max_idle_seconds)),
            ("grpc.max_connection_age_ms", milliseconds(self.max_age_seconds)),
            ("grpc.max_connection_age_grace_ms", milliseconds(self.max_age_grace_seconds)),
            # Clients may keep their connections alive with pings of their own, but not flood them.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", milliseconds(MIN_PING_INTERVAL_SECONDS)),
        ]


@dataclass
class ServerConfig:
    checkpoint: str | Path | None   # one checkpoint folder; None with `models`
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 50051
    redis_cluster: bool = False
    tokens_file: str | Path | None = None
    allow_unauthenticated: bool = False
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    tls_client_ca: str | Path | None = None   # set: clients must present a certificate (mutual TLS)
    max_batch: int | None = None     # None: measured with the precision at start (see BatchingEncoder)
    max_wait_ms: float = 5.0
    precision: str = "auto"
    tuning_cache: str | Path | None = None   # file keeping measured choices; None: measure at every start
    device: str = "auto"
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    store_audio: bool = False
    settings: ServiceSettings = field(default_factory=ServiceSettings)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    grpc_web_port: int | None = None  # set (0 = any free port): also serve gRPC-web for browsers on this port
    grpc_web_origins: tuple[str, ...] = ("*",)  # origins whose pages may call it (CORS)
    models: str | Path | None = None  # a model folder: one checkpoint folder per version + `current`
    models_poll_seconds: float = POLL_SECONDS
    # Wall time the store stamps scores, ends and interruptions with; tests pass a clock they move.
    clock: Callable[[], float] = time.time


def server_credentials(config: ServerConfig):
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


class ScoringServer:
    def __init__(self, config: ServerConfig, model=None) -> None:
        self.config = config
        self.model = model
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._redis = None
        self.repository: ModelRepository | None = None
        self.health = health_aio.HealthServicer()
        self.readiness: RedisReadiness | None = None
        self.authenticator: TokenAuthenticator | None = None
        self._token_watch: asyncio.Task | None = None
        self.grpc_web = None
        self.grpc_web_port: int | None = None

    def _authenticator(self) -> TokenAuthenticator:
        config = self.config
        if config.tokens_file:
            return TokenAuthenticator.from_file(config.tokens_file)
        if config.allow_unauthenticated:
            log.warning("authentication is DISABLED: anyone who reaches this port can stream and read scores")
            return TokenAuthenticator.disabled()
        raise ValueError("no --tokens file given: create one with `moodstream token create`, "
                         "or pass --allow-unauthenticated for a local test")

    @property
    def model_version(self) -> str | None:
        """The version new sessions get."""
        return self.repository.current if self.repository is not None else None

    @property
    def encoder(self) -> BatchingEncoder | None:
        """The current version's encoder worker."""
        return self.repository.served_current().encoder if self.repository is not None else None

    @property
    def current_model(self):
        return self.repository.served_current().model if self.repository is not None else None

    async def start(self) -> int:
        config = self.config
        authenticator = self.authenticator = self._authenticator()
        credentials = server_credentials(config)
        if (config.models is None) == (config.checkpoint is None and self.model is None):
            raise ValueError("give either --checkpoint or --models")
        from moodstream.model import pick_device

        device = pick_device(config.device)
        if self.model is None and config.checkpoint is not None:
            from moodstream.model import ScreeningModel

            self.model = ScreeningModel.from_pretrained(config.checkpoint).to(device).eval()
        self._redis = connect(config.redis_url, cluster=config.redis_cluster,
                              retry_seconds=config.settings.redis_retry_seconds)
        try:
            await self._redis.ping()
        except Exception as error:
            await self._redis.aclose()
            raise ValueError(f"cannot reach Redis at {config.redis_url}: {error}") from error

        def make_store(version: str) -> SessionStore:
            return SessionStore(self._redis, model_version=version, ttl_seconds=config.ttl_seconds,
                                store_audio=config.store_audio, clock=config.clock)

        def make_encoder(model) -> BatchingEncoder:
            return BatchingEncoder(model, config.max_batch, config.max_wait_ms, config.precision,
                                   config.tuning_cache or None)

        self.repository = ModelRepository(make_encoder=make_encoder, make_store=make_store, device=device,
                                          folder=config.models if self.model is None else None, model=self.model,
                                          poll_seconds=config.models_poll_seconds)
        await self.repository.start()
        model = self.repository.served_current().model
        service = ScreeningService(repository=self.repository, make_store=make_store,
                                   authenticator=authenticator, settings=config.settings)
        interceptors = [SingleRequestInterceptor(), MalformedRequestInterceptor(SERVICE_NAME),
                        SessionMetadataInterceptor(SERVICE_NAME)]
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            *config.limits.grpc_options(),
        ])
        moodstream_pb2_grpc.add_ScreeningServicer_to_server(service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, grpc_reflection.SERVICE_NAME),
            server)
        address = f"{config.host}:{config.port}"
        try:
            port = (server.add_secure_port(address, credentials) if credentials
                    else server.add_insecure_port(address))
        except RuntimeError:  # grpc's "Failed to bind": the reason went to its log
            port = 0
        if port == 0:
            raise ValueError(f"cannot listen on {address} (in use or not permitted)")
        await server.start()
        self._server, self.port = server, port
        if config.grpc_web_port is not None:
            try:
                await self._start_grpc_web(service)
            except BaseException:
                await self.stop(grace=0)
                raise
        if authenticator.path is not None:
            self._token_watch = asyncio.create_task(self._watch_tokens(), name="tokens-file-watch")
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.readiness = RedisReadiness(self.health, config.redis_url, cluster=config.redis_cluster)
        await self.readiness.start()
        log.info("serving %s on %s:%d (model %s of %s, precision %s, max batch %d, device %s, %s). %s",
                 SERVICE_NAME, config.host, port, self.model_version, ", ".join(self.repository.held()),
                 self.encoder.precision, self.encoder.max_batch, model.device,
                 "TLS" if credentials else "plaintext", SCREENING_NOTICE)
        return port

    async def _start_grpc_web(self, service: ScreeningService) -> None:
        from moodstream.server.grpc_web import GrpcWebServer, grpc_web_app

        config = self.config
        app = grpc_web_app(service, list(config.grpc_web_origins), MAX_MESSAGE_BYTES)
        self.grpc_web = GrpcWebServer(app, config.host, config.grpc_web_port, config.tls_cert, config.tls_key,
                                      config.tls_client_ca)
        self.grpc_web_port = await self.grpc_web.start()
        log.info("serving gRPC-web on %s:%d (%s) for pages from %s", config.host, self.grpc_web_port,
                 "TLS" if config.tls_cert else "plaintext", ", ".join(config.grpc_web_origins))

    async def _watch_tokens(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                self.authenticator.reload_if_changed()
            except Exception:  # never let a watch failure end the watch: the next look may succeed
                log.exception("checking the tokens file failed")

    async def stop(self, grace: float = 2.0) -> None:
        if self.readiness is not None:
            await self.readiness.stop()  # first: a last check must not turn a draining server SERVING again
            self.readiness = None
        if self._token_watch is not None:
            self._token_watch.cancel()
            self._token_watch = None
        if self.grpc_web is not None:
            await self.grpc_web.stop()
            self.grpc_web = None
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(grace)
            self._server = None
        if self.repository is not None:
            await self.repository.stop()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve_forever(config: ServerConfig, on_started=None) -> None:
    """Run until SIGINT/SIGTERM, then drain streams for a few seconds."""
    server = ScoringServer(config)
    await server.start()
    if on_started is not None:
        on_started(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=5.0)


class BackgroundServer:
    """A ScoringServer on its own event loop in a thread (for the demo, tests and embedding).

        with BackgroundServer(config) as server:
            channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    """

    def __init__(self, config: ServerConfig, model=None) -> None:
        import threading

        self.server = ScoringServer(config, model)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scoring-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def model_version(self) -> str:
        return self.server.model_version

    def start(self, timeout: float = 120.0) -> "BackgroundServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout)
        return self

    async def _shutdown(self, grace: float) -> None:
        await self.server.stop(grace)
        # Handlers of calls cut off by the stop must finish before the loop closes.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self, grace: float = 1.0) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop).result(grace + 30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def __enter__(self) -> "BackgroundServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()
