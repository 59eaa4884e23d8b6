"""The shared wire facts: ScoreUpdate as a dict and back, the bearer metadata, channels, and a Subscribe that
resumes from its offset (over real gRPC, against a small in-test Subscribe that breaks off on cue)."""
import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import json_format

from moodstream import SCREENING_NOTICE
from moodstream.server.app import ConnectionLimits
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
from moodstream.wire import (CLIENT_KEEPALIVE_SECONDS, CLIENT_KEEPALIVE_TIMEOUT_SECONDS, MIN_PING_INTERVAL_SECONDS,
                             NO_INTERVAL_NOTE, Subscription, bearer_metadata, channel_options, interval_note,
                             interval_text, open_channel, score_from_dict, score_to_dict)
from tcp_relay import TcpRelay


def an_update(**fields) -> pb.ScoreUpdate:
    values = dict(session_id="s-1", participant_id="p-1", segments=3, probability=0.25, above_threshold=False,
                  threshold=0.5, model_version="m1", time_unix=1700000000.5, seq=2, offset="17-0",
                  device_id="kiosk", speech_seconds=21.0, notice=SCREENING_NOTICE, start_seconds=14.0)
    return pb.ScoreUpdate(**(values | fields))


def test_a_score_reads_with_its_interval_and_the_note_says_what_the_brackets_mean_or_that_there_are_none():
    with_interval = score_to_dict(an_update(probability_low=0.11, probability_high=0.4, interval_level=0.8))
    assert interval_text(with_interval) == "0.25 (0.11\u20130.40)"
    assert interval_note(with_interval) == "in brackets: the 80% interval around each probability"
    without = score_to_dict(an_update())
    assert interval_text(without) == "0.25" and interval_note(without) == NO_INTERVAL_NOTE


@pytest.mark.parametrize("probability, low, high, text", [
    (0.9999, 0.9962, 0.99998, ">0.99 (>0.99\u2013>0.99)"),
    (0.994, 0.976, 0.9971, "0.99 (0.98\u2013>0.99)"),
    (1.0, 1.0, 1.0, ">0.99 (>0.99\u2013>0.99)"),
    (0.003, 0.0, 0.011, "<0.01 (<0.01\u20130.01)"),
    (0.0061, 0.0051, 0.0072, "0.01 (0.01\u20130.01)"),
])
def test_no_probability_reads_as_certain(probability, low, high, text):
    values = score_to_dict(an_update(probability=probability, probability_low=low, probability_high=high,
                                     interval_level=0.9))
    assert interval_text(values) == text


def test_a_score_dict_has_every_field_by_its_proto_name_with_numbers_as_numbers():
    values = score_to_dict(an_update(segments=2**40, seq=2**40 - 1))
    assert set(values) == {field.name for field in pb.ScoreUpdate.DESCRIPTOR.fields}
    assert values["segments"] == 2**40 and values["seq"] == 2**40 - 1  # not the JSON mapping's strings
    assert values["session_state"] == "SESSION_STATE_UNSPECIFIED"


def test_an_unset_evidence_flag_reads_as_sufficient_and_a_false_one_as_false():
    assert score_to_dict(an_update())["evidence_sufficient"] is True
    assert score_to_dict(an_update(evidence_sufficient=False))["evidence_sufficient"] is False


def test_a_stored_score_becomes_the_same_update_with_the_notice():
    update = an_update(evidence_sufficient=False)
    stored = {k: v for k, v in score_to_dict(update).items() if k not in ("notice", "session_state")}
    assert score_from_dict(stored) == update
    without_flag = score_from_dict({"session_id": "s-1", "seq": 0})
    assert without_flag.HasField("evidence_sufficient") and without_flag.evidence_sufficient
    assert without_flag.notice == SCREENING_NOTICE


def test_a_field_that_is_not_scoreupdates_is_refused():
    with pytest.raises(json_format.ParseError, match="volume"):
        score_from_dict({"session_id": "s-1", "volume": 3})


def test_the_bearer_metadata_is_empty_without_a_token():
    assert bearer_metadata("abc") == (("authorization", "Bearer abc"),)
    assert bearer_metadata(None) == () and bearer_metadata("") == ()


def test_client_keepalive_pings_no_more_often_than_the_server_accepts():
    options = dict(channel_options())
    server_options = dict(ConnectionLimits().grpc_options())
    assert options["grpc.keepalive_time_ms"] == CLIENT_KEEPALIVE_SECONDS * 1000
    assert options["grpc.keepalive_time_ms"] >= server_options["grpc.http2.min_ping_interval_without_data_ms"]
    assert server_options["grpc.http2.min_ping_interval_without_data_ms"] == MIN_PING_INTERVAL_SECONDS * 1000


def test_a_channel_with_an_unreadable_ca_file_says_so(tmp_path):
    with pytest.raises(OSError):
        open_channel("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")


class BreakingSubscribe(pb_grpc.ScreeningServicer):
    """Serves updates 1..total to Subscribe; the first call breaks off with UNAVAILABLE after `break_after`,
    the next ends the stream after the rest."""

    def __init__(self, total: int, break_after: int):
        self.total, self.break_after = total, break_after
        self.requests: list[tuple[str, str]] = []

    def Subscribe(self, request, context):
        self.requests.append((request.participant_id, request.after_offset))
        first = int(request.after_offset.split("-")[0]) + 1 if request.after_offset else 1
        for number in range(first, self.total + 1):
            if len(self.requests) == 1 and number > self.break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            yield an_update(seq=number - 1, segments=number, offset=f"{number}-0")


@pytest.fixture
def breaking():
    service = BreakingSubscribe(total=5, break_after=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ScreeningServicer_to_server(service, server)
    service.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield service
    server.stop(None)


def assert_resumed_once(service, breaks, seen, subscription):
    assert seen == [0, 1, 2, 3, 4]
    assert service.requests[:2] == [("p-1", ""), ("p-1", "2-0")]
    assert breaks[0] == grpc.StatusCode.UNAVAILABLE
    assert subscription.offset == "5-0"


def test_a_subscription_resumes_from_the_last_offset_and_yields_each_update_once(breaking):
    breaks = []

    def on_break(error):
        breaks.append(None if error is None else error.code())
        return 0.01

    async def scenario():
        async with open_channel(breaking.address, asynchronous=True) as channel:
            subscription = Subscription(pb_grpc.ScreeningStub(channel), "p-1", bearer_metadata("t"),
                                        on_break=on_break)
            seen = []
            async for update in subscription:
                seen.append(update.seq)
                if len(seen) == 5:
                    break
            return seen, subscription

    seen, subscription = asyncio.run(scenario())
    assert_resumed_once(breaking, breaks, seen, subscription)


def test_a_blocking_subscription_resumes_the_same_way_and_ends_when_told(breaking):
    breaks, stop = [], threading.Event()

    def on_break(error):
        breaks.append(None if error is None else error.code())
        return 0.01

    with open_channel(breaking.address) as channel:
        subscription = Subscription(pb_grpc.ScreeningStub(channel), "p-1", bearer_metadata("t"), on_break=on_break)
        seen = []
        for update in subscription.follow(stop):
            seen.append(update.seq)
            if len(seen) == 5:
                stop.set()
    assert_resumed_once(breaking, breaks, seen, subscription)


class FreezingProxy(TcpRelay):
    """A TCP relay to `target` that can go silent without closing anything: a half-open connection, as a
    network partition leaves it."""

    def __init__(self, target_port: int):
        self.frozen = threading.Event()
        self.server_hung_up = threading.Event()  # the target closed its side
        super().__init__(target_port)

    def from_client(self, source, sink):
        self._relay(source, sink, from_server=False)

    def from_server(self, source, sink):
        self._relay(source, sink, from_server=True)

    def _relay(self, source, sink, from_server: bool):
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                if from_server:
                    self.server_hung_up.set()
                return
            if self.frozen.is_set():
                continue  # swallowed: neither side hears from the other again, and neither is told
            sink.sendall(data)


class QuietSubscribe(pb_grpc.ScreeningServicer):
    """Sends one update, then keeps the call open without a word."""

    def Subscribe(self, request, context):
        yield an_update(offset="1-0")
        while context.is_active():
            time.sleep(0.2)


def test_keepalive_ends_a_quiet_call_on_a_connection_that_went_silent():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ScreeningServicer_to_server(QuietSubscribe(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    proxy = FreezingProxy(port)
    try:
        with open_channel(f"127.0.0.1:{proxy.port}") as channel:
            call = pb_grpc.ScreeningStub(channel).Subscribe(pb.SubscribeRequest(participant_id="p-1"))
            assert next(call).offset == "1-0"
            proxy.frozen.set()
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
            silent_for = time.monotonic() - started
    finally:
        proxy.close()
        server.stop(None)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert silent_for <= CLIENT_KEEPALIVE_SECONDS + CLIENT_KEEPALIVE_TIMEOUT_SECONDS + 5
