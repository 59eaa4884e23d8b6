"""ListSessions, from a client compiled from the .proto: scoping, filters, paging, on one Redis and on a cluster."""
import time

import grpc
import pytest
import redis
from redis.cluster import RedisCluster

from moodstream.server.store import CLAIM_TTL_SECONDS, DEFAULT_TTL_SECONDS
from moodstream.server.store_keys import SessionKeys, owner_key
from raw_client import RawClient, acks
from server_harness import make_chunks

CHUNKS = make_chunks(2, seed=8)
Code = grpc.StatusCode


MODEL_SEED = 9  # the conftest's `model` fixture: the tiny model of this seed


@pytest.fixture(params=["one replica", "3-master cluster"])
def server(request, start_server):
    """A server per test on an emptied Redis: a single one, or a cluster."""
    cluster = request.param != "one replica"
    running = start_server(redis_url=request.getfixturevalue("redis_cluster_url" if cluster else "redis_url"),
                           redis_cluster=cluster)
    running.cluster = cluster
    return running


def raw(channel, pool, tokens, name) -> RawClient:
    return RawClient(channel, pool, tokens.by_name[name])


def record(client: RawClient, session: str, participant: str, chunks: int, end: bool) -> None:
    requests = [client.header(session, participant)] + [client.chunk(seq, CHUNKS[seq]) for seq in range(chunks)]
    if end:
        requests.append(client.end(chunks - 1))
    assert [seq for seq, _ in acks(client.bidi("Stream", requests))] == list(range(chunks))


def listing(client: RawClient, **filters) -> list[tuple[str, str]]:
    """(participant, session) of every page, following next_page_token."""
    found, token, pages = [], "", 0
    while True:
        page = client.unary("ListSessions", client.request("ListSessions", page_token=token, **filters))
        found += [(s.participant_id, s.session_id) for s in page.sessions]
        pages += 1
        token = page.next_page_token
        if not token:
            return found
        assert pages < 50


@pytest.fixture
def sessions(server, channel, pool, tokens):
    admin = raw(channel, pool, tokens, "admin")
    started = time.time()
    record(admin, "p1-monday", "p1", 2, end=True)
    record(admin, "p1-tuesday", "p1", 1, end=False)  # still live: closed without End, so interrupted
    record(admin, "p2-monday", "p2", 1, end=True)
    with pytest.raises(grpc.RpcError):  # refused after its header: claimed, never applied
        list(admin.bidi("Stream", [admin.header("p3-refused", "p3"), admin.chunk(0, b"\0\0")]))
    return started


def test_a_reader_lists_exactly_its_participants_sessions(server, channel, pool, tokens, sessions):
    assert listing(raw(channel, pool, tokens, "reader-p1")) == [("p1", "p1-tuesday"), ("p1", "p1-monday")]
    everyone = listing(raw(channel, pool, tokens, "admin"))
    assert everyone == [("p1", "p1-tuesday"), ("p1", "p1-monday"), ("p2", "p2-monday")]  # not the refused one


def test_summaries_carry_the_state_and_latest_score(server, channel, pool, tokens, sessions):
    admin = raw(channel, pool, tokens, "admin")
    page = admin.unary("ListSessions", admin.request("ListSessions", participant_id="p1"))
    tuesday, monday = page.sessions
    interrupted, ended = (admin.pool.FindEnumTypeByName("moodstream.v1.SessionState").values_by_name[name].number
                          for name in ("SESSION_STATE_INTERRUPTED", "SESSION_STATE_ENDED"))
    assert (monday.state, monday.segments, monday.latest.seq, monday.device_id) == (ended, 2, 1, "raw-client")
    assert (tuesday.state, tuesday.segments) == (interrupted, 1)
    assert sessions <= monday.started_unix <= monday.last_update_unix <= monday.state_since_unix <= time.time()
    assert tuesday.last_update_unix <= tuesday.state_since_unix <= time.time()
    assert monday.latest.session_state == tuesday.latest.session_state == 0  # the summary's state says it
    assert monday.latest.notice and 0.0 <= monday.latest.probability <= 1.0
    assert monday.last_update_unix == monday.latest.time_unix


def test_filters_by_participant_state_and_time(server, channel, pool, tokens, sessions):
    admin = raw(channel, pool, tokens, "admin")
    states = admin.pool.FindEnumTypeByName("moodstream.v1.SessionState").values_by_name
    assert listing(admin, participant_id="p2") == [("p2", "p2-monday")]
    state = {name.removeprefix("SESSION_STATE_").lower(): value.number for name, value in states.items()}
    live = [state["open"], state["interrupted"]]
    assert listing(admin, states=live) == [("p1", "p1-tuesday")]
    assert listing(admin, states=[state["open"]]) == []
    assert listing(admin, states=[state["ended"]]) == [("p1", "p1-monday"), ("p2", "p2-monday")]
    assert len(listing(admin, states=[*live, state["ended"]])) == len(listing(admin)) == 3
    assert listing(admin, active_after_unix=time.time() + 60) == []
    assert listing(admin, active_before_unix=sessions - 60) == []
    assert len(listing(admin, active_after_unix=sessions, active_before_unix=time.time())) == 3
    assert listing(admin, participant_id="p9") == []  # readable, but has no session


def test_pages_cover_every_session_once(server, channel, pool, tokens, sessions):
    admin = raw(channel, pool, tokens, "admin")
    assert listing(admin, page_size=1) == listing(admin, page_size=1000)
    first = admin.unary("ListSessions", admin.request("ListSessions", page_size=2))
    assert len(first.sessions) == 2 and first.next_page_token
    last = admin.unary("ListSessions", admin.request("ListSessions", page_size=2, page_token=first.next_page_token))
    assert [s.session_id for s in last.sessions] == ["p2-monday"] and last.next_page_token == ""


@pytest.mark.parametrize("token, request_fields, code, fragment", [
    ("reader-p1", {"participant_id": "p2"}, Code.PERMISSION_DENIED, "may not read participant 'p2'"),
    ("agent", {}, Code.PERMISSION_DENIED, "may not read any participant"),
    ("admin", {"participant_id": "p 1"}, Code.INVALID_ARGUMENT, "participant_id 'p 1' is invalid"),
    ("admin", {"states": [9]}, Code.INVALID_ARGUMENT, "unknown or unspecified session state(s) [9]"),
    ("admin", {"states": [2, 0]}, Code.INVALID_ARGUMENT, "unknown or unspecified session state(s) [0]"),
    ("admin", {"active_after_unix": float("nan")}, Code.INVALID_ARGUMENT, "active_after_unix"),
    ("admin", {"active_after_unix": 200.0, "active_before_unix": 100.0}, Code.INVALID_ARGUMENT, "window is empty"),
    ("admin", {"page_token": "not a token"}, Code.INVALID_ARGUMENT, "page_token is malformed"),
])
def test_bad_list_requests(server, channel, pool, tokens, token, request_fields, code, fragment):
    client = raw(channel, pool, tokens, token)
    with pytest.raises(grpc.RpcError) as info:
        client.unary("ListSessions", client.request("ListSessions", **request_fields))
    assert info.value.code() == code and fragment in info.value.details(), info.value.details()


def test_a_page_token_works_only_with_its_own_filters(server, channel, pool, tokens, sessions):
    admin = raw(channel, pool, tokens, "admin")
    first = admin.unary("ListSessions", admin.request("ListSessions", page_size=1))
    with pytest.raises(grpc.RpcError) as info:
        admin.unary("ListSessions", admin.request("ListSessions", page_size=1, participant_id="p1",
                                                  page_token=first.next_page_token))
    assert info.value.code() == Code.INVALID_ARGUMENT and "other filters" in info.value.details()


def test_a_refusal_after_the_header_leaves_only_short_lived_claim_keys(server, channel, pool, tokens, sessions):
    client = (RedisCluster if server.cluster else redis.Redis).from_url(server.redis_url)
    try:
        refused_owner_ttl = client.ttl(owner_key("p3-refused"))
        applied_owner_ttl = client.ttl(owner_key("p1-monday"))
        record_key = SessionKeys.build("p3", "p3-refused", server.model_version).session
        refused_keys = [key for key in (owner_key("p3-refused"), record_key) if client.exists(key)]
        refused_record_ttl = client.ttl(record_key)
    finally:
        client.close()
    assert len(refused_keys) == 2  # the claim: owner key and session record, nothing else
    assert 0 < refused_owner_ttl <= CLAIM_TTL_SECONDS and 0 < refused_record_ttl <= CLAIM_TTL_SECONDS
    assert applied_owner_ttl > DEFAULT_TTL_SECONDS - 60
