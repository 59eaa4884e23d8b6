"""Enrolment codes: a device trades a single-use, short-lived code for its participant's stream token (Enrol),
against real scoring servers and Redis, through a client compiled from the .proto alone (tests/raw_client.py).

Every refusal has its own status and says what to do: a malformed code, an unknown one, one already used
(on this replica or another), an expired one, one whose token was revoked. The tokens file holds neither
codes nor tokens.
"""
import json
import time

import grpc
import pytest
import redis
from prometheus_client import REGISTRY

from moodstream.server.auth import UNAUTHENTICATED_METHODS, add_enrolment, create_token, load_tokens, revoke_token
from moodstream.server.enrolment import code_digest
from moodstream.server.store_keys import enrolment_used_key
from raw_client import RawClient
from server_harness import write_tokens
from waiting import wait_for

Code = grpc.StatusCode
DAY = 86400


@pytest.fixture
def enrol_tokens(tmp_path):
    """The usual tokens, and a phone token for p1 with one enrolment code."""
    tokens = write_tokens(tmp_path)
    token = tokens.by_name["phone-p1"] = create_token(tokens.path, "phone-p1", ["p1"], [])
    code, _ = add_enrolment(tokens.path, "phone-p1", token, "p1", DAY)
    return tokens, code


def raw(server, pool, token: str | None = None) -> RawClient:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return RawClient(channel, pool, token)


def enrol(client: RawClient, code: str, claim: str = ""):
    return client.unary("Enrol", client.request("Enrol", code=code, device_claim=claim), timeout=30)


def refusal(client: RawClient, code: str, claim: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        enrol(client, code, claim)
    return info.value


def used_marks(redis_url: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter("ms:enrol:*"))
    finally:
        client.close()


def test_a_code_gives_its_token_once_and_then_says_it_was_used(start_server, enrol_tokens, pool, redis_url):
    tokens, code = enrol_tokens
    server = start_server(tokens=tokens)
    client = raw(server, pool)
    answer = enrol(client, code, claim="phone-a")
    assert (answer.participant_id, answer.token, answer.token_name) == ("p1", tokens.by_name["phone-p1"], "phone-p1")
    # The token works: the phone may now stream for p1 (GetModelInfo answers any valid token).
    assert raw(server, pool, answer.token).unary("GetModelInfo", client.request("GetModelInfo")).model_version
    # The same device resending after a lost answer gets it again; anyone else is refused.
    assert enrol(client, code, claim="phone-a").token == answer.token
    for other in ("phone-b", ""):
        error = refusal(client, code, claim=other)
        assert error.code() == Code.FAILED_PRECONDITION and "already used" in error.details(), error.details()
        assert "ask your clinician for a new link" in error.details()
    assert used_marks(redis_url) == [enrolment_used_key(code_digest(code)).encode()]


def enrolment_counts() -> dict[str, float]:
    outcomes = ("enrolled", "invalid_argument", "not_found", "failed_precondition", "permission_denied")
    return {outcome: REGISTRY.get_sample_value("moodstream_enrolments_total", {"outcome": outcome}) or 0.0
            for outcome in outcomes}


def test_every_enrol_call_is_counted_by_its_outcome(start_server, enrol_tokens, pool):
    """moodstream_enrolments_total (the servers run in this process, so their Prometheus registry is this one)."""
    tokens, code = enrol_tokens
    client = raw(start_server(tokens=tokens), pool)
    before = enrolment_counts()
    enrol(client, code, claim="phone-a")
    enrol(client, code, claim="phone-a")  # a resend after a lost answer
    for attempt in (code, "A" * 22, "B" * 22, "short"):
        refusal(client, attempt, claim="phone-b")
    after = enrolment_counts()
    assert {outcome: after[outcome] - before[outcome] for outcome in after} == {
        "enrolled": 2, "invalid_argument": 1, "not_found": 2, "failed_precondition": 1, "permission_denied": 0}


def test_a_code_used_on_one_replica_is_refused_on_another(start_server, enrol_tokens, pool):
    tokens, code = enrol_tokens
    first, second = start_server(tokens=tokens), start_server(tokens=tokens)
    assert enrol(raw(first, pool), code, claim="phone-a").token == tokens.by_name["phone-p1"]
    error = refusal(raw(second, pool), code, claim="phone-b")
    assert error.code() == Code.FAILED_PRECONDITION and "already used" in error.details()


def test_an_expired_code_is_refused_and_marks_nothing(start_server, tmp_path, pool, redis_url):
    tokens = write_tokens(tmp_path)
    token = create_token(tokens.path, "phone-p1", ["p1"], [])
    code, expires = add_enrolment(tokens.path, "phone-p1", token, "p1", 60, now=time.time() - 120)
    server = start_server(tokens=tokens)
    error = refusal(raw(server, pool), code)
    assert error.code() == Code.FAILED_PRECONDITION
    assert "this enrolment code expired at" in error.details() and "new link" in error.details()
    assert used_marks(redis_url) == []


@pytest.mark.parametrize("code, status, says", [
    ("", Code.INVALID_ARGUMENT, "is not an enrolment code"),
    ("short", Code.INVALID_ARGUMENT, "is not an enrolment code"),
    ("a" * 22 + "'", Code.INVALID_ARGUMENT, "is not an enrolment code"),
    ("A" * 22, Code.NOT_FOUND, "not known to the server"),
])
def test_a_malformed_or_unknown_code_is_refused_without_touching_redis(start_server, enrol_tokens, pool, redis_url,
                                                                       code, status, says):
    tokens, _ = enrol_tokens
    server = start_server(tokens=tokens)
    error = refusal(raw(server, pool), code)
    assert error.code() == status and says in error.details(), error.details()
    assert used_marks(redis_url) == []


def test_a_code_whose_token_was_revoked_is_refused(start_server, enrol_tokens, pool, redis_url):
    tokens, code = enrol_tokens
    server = start_server(tokens=tokens)
    revoke_token(tokens.path, "phone-p1")
    phone = raw(server, pool, tokens.by_name["phone-p1"])

    def token_refused() -> bool:
        try:
            phone.unary("GetModelInfo", phone.request("GetModelInfo"))
        except grpc.RpcError as error:
            return error.code() == Code.UNAUTHENTICATED
        return False

    wait_for(token_refused, "the server to reload the tokens file and refuse the revoked token", timeout=20)
    error = refusal(raw(server, pool), code)
    assert error.code() == Code.PERMISSION_DENIED
    assert "('phone-p1') was revoked" in error.details() and "new link" in error.details()
    assert used_marks(redis_url) == []


def test_an_entry_edited_in_the_tokens_file_does_not_open(start_server, enrol_tokens, pool):
    """The participant and token name are sealed with the token: moving a code to another participant breaks it."""
    tokens, code = enrol_tokens
    document = json.loads(tokens.path.read_text())
    document["enrolments"][0]["participant"] = "p2"
    tokens.path.write_text(json.dumps(document))
    server = start_server(tokens=tokens)
    error = refusal(raw(server, pool), code)
    assert error.code() == Code.FAILED_PRECONDITION and "does not open" in error.details()


def test_the_tokens_file_holds_neither_the_code_nor_the_token_and_old_files_still_load(enrol_tokens, tmp_path):
    tokens, code = enrol_tokens
    text = tokens.path.read_text()
    assert code not in text and tokens.by_name["phone-p1"] not in text
    entry = json.loads(text)["enrolments"][0]
    assert entry["sha256"] == code_digest(code) and entry["participant"] == "p1" and entry["token"] == "phone-p1"
    old = tmp_path / "old.json"  # a file from before enrolment codes
    old.write_text(json.dumps({"tokens": json.loads(text)["tokens"]}))
    assert load_tokens(old) == load_tokens(tokens.path)


def test_a_code_cannot_enrol_a_token_that_is_not_in_the_file_or_cannot_stream_for_the_participant(tmp_path):
    tokens = write_tokens(tmp_path)
    with pytest.raises(ValueError, match="no token named 'agent-p1' with that value"):
        add_enrolment(tokens.path, "agent-p1", "not-its-token", "p1", DAY)
    with pytest.raises(ValueError, match="may not stream for 'p2'"):
        add_enrolment(tokens.path, "agent-p1", tokens.by_name["agent-p1"], "p2", DAY)


def test_enrol_is_the_only_method_that_needs_no_token(server, pool):
    """Every Screening method but those in auth.UNAUTHENTICATED_METHODS refuses a call without a token."""
    client = raw(server, pool)
    answered_without_token = set()
    for name, method in client.service.methods_by_name.items():
        request = client.request(name)
        with pytest.raises(grpc.RpcError) as info:
            if method.client_streaming:
                list(client.bidi(name, [request], timeout=30))
            elif method.server_streaming:
                list(client.server_stream(name, request, timeout=30))
            else:
                client.unary(name, request, timeout=30)
        if info.value.code() != Code.UNAUTHENTICATED:
            answered_without_token.add(name)
    assert answered_without_token == UNAUTHENTICATED_METHODS == {"Enrol"}
