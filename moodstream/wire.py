"""What every side of the moodstream.v1 wire shares, torch-free: audio format, bearer and session metadata, channels,
ScoreUpdate as a dict, and a Subscribe that resumes where it broke off.

The agent, the dashboard, the demo and the server all import these; the wire itself is described in docs/clinic-api.md.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from moodstream import SCREENING_NOTICE, evidence_sufficient
from moodstream.backoff import Backoff
from moodstream.v1 import moodstream_pb2 as pb

SAMPLE_RATE = 16000        # Hz, mono
BYTES_PER_SAMPLE = 2       # PCM s16le
# A 10 s chunk is 320 kB; anything much larger is refused by gRPC itself, on both ends.
MAX_MESSAGE_BYTES = 1024 * 1024

# HTTP/2 keepalive: a client pings its transport this often and drops it when a ping goes unanswered
# this long, so a dead connection ends every call on it with UNAVAILABLE (and the caller resumes)
# within about 30 s, even while the call itself waits quietly for a reply.
CLIENT_KEEPALIVE_SECONDS = 20.0
CLIENT_KEEPALIVE_TIMEOUT_SECONDS = 10.0
# The server accepts pings this far apart at the most often; clients stay above it.
MIN_PING_INTERVAL_SECONDS = 10.0


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token; none without a token."""
    return (("authorization", f"Bearer {token}"),) if token else ()


# The session id again, as call metadata, on every Stream and PutChunk call: the body is opaque to a load
# balancer, so this is what one hashes on to send all of a session's calls to the replica that holds its
# scorer state in memory (deploy/haproxy.cfg, deploy/nginx.conf). nginx reads it as $http_moodstream_session_id.
SESSION_ID_METADATA_KEY = "moodstream-session-id"


def session_metadata(session_id: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that names a call's session, for session affinity at a load balancer."""
    return ((SESSION_ID_METADATA_KEY, session_id),)


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", int(CLIENT_KEEPALIVE_SECONDS * 1000)),
        ("grpc.keepalive_timeout_ms", int(CLIENT_KEEPALIVE_TIMEOUT_SECONDS * 1000)),
        # What bounds an unanswered ping in gRPC core 1.85 (60 s by default); keepalive_timeout_ms alone does not.
        ("grpc.http2.ping_timeout_ms", int(CLIENT_KEEPALIVE_TIMEOUT_SECONDS * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # A quiet Subscribe sends no data for minutes: keep pinging all the same.
        ("grpc.http2.max_pings_without_data", 0),
        # Callers resume on their own terms; gRPC's transparent retries would only hide the outage.
        ("grpc.enable_retries", 0),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]


def open_channel(address: str, *, tls: bool = False, tls_ca: str | Path | None = None,
                 asynchronous: bool = False) -> grpc.Channel | grpc.aio.Channel:
    """A channel to HOST:PORT with keepalive; TLS with the system's roots (`tls`) or with the CA in `tls_ca`.

    OSError when the CA file cannot be read.
    """
    module = grpc.aio if asynchronous else grpc
    if not tls and tls_ca is None:
        return module.insecure_channel(address, options=channel_options())
    roots = Path(tls_ca).read_bytes() if tls_ca is not None else None
    return module.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots),
                                 options=channel_options())


# ScoreUpdate's interval around the probability (docs/calibration.md): all set, or none.
INTERVAL_FIELDS = ("probability_low", "probability_high", "interval_level")


def probability_text(probability: float) -> str:
    """A probability to two decimals, except that one which would read 0.00 or 1.00 reads "<0.01" or ">0.99":
    a screening score that prints as certain tells a clinician nothing is left to judge, and no score here is
    certain (docs/calibration.md)."""
    text = f"{probability:.2f}"
    return {"0.00": "<0.01", "1.00": ">0.99"}.get(text, text)


def interval_text(values: Mapping[str, Any]) -> str:
    """A score dict's probability with its interval, as people read it: "0.72 (0.61-0.80)", or "0.72"."""
    text = probability_text(values["probability"])
    if values.get("probability_low") is None:
        return text
    return f"{text} ({probability_text(values['probability_low'])}\u2013{probability_text(values['probability_high'])})"


# Said once per model whose scores carry no interval, never on every score line.
NO_INTERVAL_NOTE = "this model gives no interval around its scores"


def interval_note(values: Mapping[str, Any]) -> str:
    """What the brackets after a score dict's probability mean, to be said once per model: the interval's level,
    or NO_INTERVAL_NOTE."""
    if values.get("probability_low") is None:
        return NO_INTERVAL_NOTE
    return f"in brackets: the {values['interval_level']:.0%} interval around each probability"


def score_to_dict(update: pb.ScoreUpdate) -> dict[str, Any]:
    """Every field of a ScoreUpdate under its .proto name, numbers as numbers, enums by name,
    evidence_sufficient as a bool (unset counts as sufficient), and the interval's fields as None when
    the checkpoint carries no interval."""
    values = json_format.MessageToDict(update, always_print_fields_with_no_presence=True,
                                       preserving_proto_field_name=True, unquote_int64_if_possible=True)
    values["evidence_sufficient"] = evidence_sufficient(update)
    for name in INTERVAL_FIELDS:
        values.setdefault(name, None)
    return values


def score_from_dict(values: Mapping[str, Any]) -> pb.ScoreUpdate:
    """A ScoreUpdate from a dict of its fields (the store's score record); always with the screening notice.

    json_format.ParseError names a field that is not ScoreUpdate's or a value of the wrong type.
    """
    given = {name: value for name, value in values.items() if not (name in INTERVAL_FIELDS and value is None)}
    update = json_format.ParseDict({**given, "notice": SCREENING_NOTICE}, pb.ScoreUpdate())
    if "evidence_sufficient" not in values:
        update.evidence_sufficient = True
    return update


def speech_settings_of(reply: pb.ModelInfo) -> dict | None:
    """The speech settings a GetModelInfo reply carries, as CaptureSettings.from_dict takes them; None if none."""
    if not reply.HasField("speech"):
        return None
    return {field.name: getattr(reply.speech, field.name) for field in reply.speech.DESCRIPTOR.fields}


# A broken Subscribe is resumed after 0.5 s, 1 s, 2 s, 4 s, then every 5 s until an update arrives.
SUBSCRIBE_BACKOFF = Backoff(base_seconds=0.5, cap_seconds=5.0)

# What a Subscribe that broke off (an RpcError, or None: the server ended the stream) should do next:
# seconds to wait before resuming, or None for the subscription's own backoff. Raise to stop.
BreakHandler = Callable[[grpc.RpcError | None], float | None]


@dataclass
class Subscription:
    """`Subscribe(participant_id)` as one endless iterator of ScoreUpdates: async over a grpc.aio channel, or
    :meth:`follow` over a blocking one.

    A call that breaks off is made again from the last offset seen, so nothing is missed or
    yielded twice; `on_break` decides how long to wait first (by default the next wait of `backoff`,
    whose schedule starts again with every update).
    """

    stub: Any                      # a ScreeningStub, of a grpc.aio channel or a blocking one
    participant_id: str
    metadata: Any
    on_break: BreakHandler
    offset: str = ""                # resume after this offset; then the last one yielded
    backoff: Backoff = SUBSCRIBE_BACKOFF
    call: Any = field(default=None, init=False)          # the Subscribe call now open
    call_started: float = field(default=0.0, init=False)  # its time.monotonic()
    _waits: Iterator[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._waits = self.backoff.waits()

    def _call(self):
        request = pb.SubscribeRequest(participant_id=self.participant_id, after_offset=self.offset)
        self.call = self.stub.Subscribe(request, metadata=self.metadata)
        self.call_started = time.monotonic()
        return self.call

    def _took(self, update: pb.ScoreUpdate) -> None:
        self._waits = self.backoff.waits()
        if update.offset:
            self.offset = update.offset

    def _delay_after(self, error: grpc.RpcError | None) -> float:
        delay = self.on_break(error)
        return next(self._waits) if delay is None else delay

    async def __aiter__(self) -> AsyncIterator[pb.ScoreUpdate]:
        while True:
            error = None
            try:
                async for update in self._call():
                    self._took(update)
                    yield update
            except grpc.aio.AioRpcError as failure:
                error = failure
            finally:
                self.call.cancel()
                self.call = None
            await asyncio.sleep(self._delay_after(error))

    def follow(self, stop: threading.Event) -> Iterator[pb.ScoreUpdate]:
        """The updates until `stop` is set, over a blocking channel's stub."""
        while not stop.is_set():
            error = None
            call = self._call()
            threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True).start()
            try:
                for update in call:
                    self._took(update)
                    yield update
            except grpc.RpcError as failure:
                error = failure
            finally:
                call.cancel()
                self.call = None
            if stop.is_set():
                return
            stop.wait(self._delay_after(error))
