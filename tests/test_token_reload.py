"""Tokens created or revoked while servers run take effect within the stated bound, on every replica."""
import contextlib
import queue
import threading
import time

import grpc
import pytest

from moodstream.compose.cli import main
from moodstream.server.auth import create_token, revoke_token
from raw_client import RawClient
from server_harness import make_chunks, write_tokens

BOUND_SECONDS = 2.0  # RELOAD_SECONDS + ServiceSettings.token_check_seconds, as docs and --help state
GOOD = make_chunks(1, seed=6)[0]
Code = grpc.StatusCode


MODEL_SEED = 7  # the conftest's `model` fixture: the tiny model of this seed


@pytest.fixture
def tokens(tmp_path):
    """A tokens file per test: the tests rewrite it."""
    return write_tokens(tmp_path)


@pytest.fixture
def replicas(start_server):
    return start_server(), start_server()


@contextlib.contextmanager
def raw_clients(replicas, pool, token):
    channels = [grpc.insecure_channel(f"127.0.0.1:{replica.port}") for replica in replicas]
    try:
        yield [RawClient(channel, pool, token) for channel in channels]
    finally:
        for channel in channels:
            channel.close()


def answer(client: RawClient) -> Code:
    try:
        client.unary("GetScore", client.request("GetScore", session_id="nothing-here"), timeout=5)
    except grpc.RpcError as error:
        return error.code()
    return Code.OK


def seconds_until(predicate, limit: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < limit, "never happened"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_token_created_and_revoked_while_replicas_run_needs_no_restart(replicas, tokens, pool):
    token = create_token(tokens.path, "late-reader", [], ["*"])
    with raw_clients(replicas, pool, token) as clients:
        for client in clients:
            waited = seconds_until(lambda: answer(client) == Code.NOT_FOUND)  # known: the session is unknown
            print(f"created token accepted after {waited:.2f} s")
            assert waited <= BOUND_SECONDS + 0.5
        assert revoke_token(tokens.path, "late-reader") == 1
        for client in clients:
            waited = seconds_until(lambda: answer(client) == Code.UNAUTHENTICATED)
            print(f"revoked token refused after {waited:.2f} s")
            assert waited <= BOUND_SECONDS + 0.5


def test_a_revoked_tokens_open_calls_end_unauthenticated(replicas, tokens, pool):
    agent_token = create_token(tokens.path, "kiosk-leaked", ["p1"], [])
    reader_token = create_token(tokens.path, "reader-leaked", [], ["p1"])
    release = threading.Event()
    with raw_clients(replicas[:1], pool, agent_token) as (agent,), \
            raw_clients(replicas[1:], pool, reader_token) as (reader,):
        for client in (agent, reader):  # each replica has read the new tokens
            seconds_until(lambda: answer(client) != Code.UNAUTHENTICATED)

        def requests():
            yield agent.header("leak", "p1")
            yield agent.chunk(0, GOOD)
            release.wait(30)  # an agent that keeps its stream open

        outcomes: queue.Queue = queue.Queue()

        def drain(name, call):
            try:
                for _ in call:
                    outcomes.put((name, "response", time.monotonic()))
                outcomes.put((name, Code.OK, time.monotonic()))
            except grpc.RpcError as error:
                outcomes.put((name, error.code(), time.monotonic()))

        stream = agent.bidi("Stream", requests(), timeout=60)
        subscription = reader.server_stream("Subscribe", reader.request("Subscribe", participant_id="p1"), timeout=60)
        threads = [threading.Thread(target=drain, args=("stream", stream)),
                   threading.Thread(target=drain, args=("subscribe", subscription))]
        for thread in threads:
            thread.start()
        seen = {"stream": 0, "subscribe": 0}
        while min(seen.values()) < 1:  # chunk 0's ack and score reached both calls: they are open and working
            name, kind, _ = outcomes.get(timeout=30)
            assert kind == "response", (name, kind)
            seen[name] += 1
        revoked = time.monotonic()
        revoke_token(tokens.path, "kiosk-leaked")
        revoke_token(tokens.path, "reader-leaked")
        ended = {}
        while len(ended) < 2:
            name, kind, when = outcomes.get(timeout=30)
            if kind != "response":
                ended[name] = (kind, when - revoked)
        release.set()
        for thread in threads:
            thread.join(10)
    for name, (code, after) in ended.items():
        print(f"open {name} call of a revoked token ended {code.name} after {after:.2f} s")
        assert code == Code.UNAUTHENTICATED, (name, code)
        assert after <= BOUND_SECONDS + 0.5, (name, after)


def test_a_broken_tokens_file_keeps_the_tokens_read_before(replicas, tokens, pool, caplog):
    good = tokens.path.read_text()
    tokens.path.write_text("{ not json")

    def refusals_of_the_broken_file() -> int:
        return sum("is unusable; keeping" in record.getMessage() for record in caplog.records)

    seconds_until(lambda: refusals_of_the_broken_file() >= len(replicas))  # every replica has tried to read it
    with raw_clients(replicas[:1], pool, tokens.by_name["admin"]) as (client,):
        assert answer(client) == Code.NOT_FOUND
    tokens.path.write_text(good)


def test_token_list_and_revoke_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "tokens.json"
    assert main(["token", "create", "--tokens", str(path), "--name", "kiosk-3", "--stream", "p001"]) == 0
    assert main(["token", "create", "--tokens", str(path), "--name", "clinic", "--read", "*"]) == 0
    capsys.readouterr()
    assert main(["token", "list", "--tokens", str(path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1:] == ["clinic   -  /  *", "kiosk-3  p001  /  -"]
    assert main(["token", "revoke", "--tokens", str(path), "kiosk-3"]) == 0
    assert main(["token", "revoke", "--tokens", str(path), "kiosk-3"]) == 2
    assert "no token named 'kiosk-3'" in capsys.readouterr().err
    assert main(["token", "list", "--tokens", str(path), "--json"]) == 0
    assert '"name": "kiosk-3"' not in capsys.readouterr().out


@pytest.mark.parametrize("option, value, message", [
    ("--read", "p 1", "--read 'p 1' is not a participant id"),
    ("--stream", "p1,a:b", "--stream 'a:b' is not a participant id"),
])
def test_token_create_refuses_participant_ids_outside_the_pattern(tmp_path, capsys, option, value, message):
    path = tmp_path / "tokens.json"
    assert main(["token", "create", "--tokens", str(path), "--name", "x", option, value]) == 2
    assert message in capsys.readouterr().err
    assert not path.exists()


def test_token_create_refuses_a_duplicate_name(tmp_path, capsys):
    path = tmp_path / "tokens.json"
    assert main(["token", "create", "--tokens", str(path), "--name", "kiosk", "--stream", "p1"]) == 0
    before = path.read_text()
    assert main(["token", "create", "--tokens", str(path), "--name", "kiosk", "--stream", "p2"]) == 2
    assert "a token named 'kiosk' is already in" in capsys.readouterr().err
    assert path.read_text() == before
