"""SessionStore against real Redis-protocol servers: a single one and a 3-master cluster."""

import asyncio
import contextlib

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from moodstream.compose.redis_process import RedisProcess
from moodstream.server.redis_connection import connect
from moodstream.server.store import SessionStore
from moodstream.server.store_records import ApplyStatus, SessionNotFoundError, SessionOwnershipError
from moodstream.server.store_values import parse_offset
from moodstream.server.store_keys import VERSIONS_KEY, SessionKeys, directory_key, owner_key, participant_prefix

VERSION = "test-model-1"
DIM = 16


def score(probability=0.25, threshold=0.5, speech_seconds=7.0, **extra):
    return {
        "probability": probability,
        "above_threshold": probability >= threshold,
        "threshold": threshold,
        "speech_seconds": speech_seconds,
        **extra,
    }


def vector(seq: int) -> bytes:
    return np.random.default_rng(seq).standard_normal(DIM).astype(np.float32).tobytes()


def state_after(seq: int) -> bytes:
    # Every byte value, NULs included: the state is opaque binary.
    return bytes(range(256)) + seq.to_bytes(8, "little")


def row_of(seq: int) -> bytes:
    """What segment `seq` appends to the scorer's rows (opaque, fixed size, NULs included)."""
    return seq.to_bytes(4, "little") + b"\0row"


def rows_until(seq: int) -> bytes:
    return b"".join(row_of(s) for s in range(seq + 1))


@contextlib.asynccontextmanager
async def open_store(url, *, cluster=False, **options):
    client = connect(url, cluster=cluster)
    try:
        yield SessionStore(client, model_version=options.pop("model_version", VERSION), **options)
    finally:
        await client.aclose()


async def apply(store, session, participant, seq, expected=..., **kw):
    expected = (seq - 1 if seq else None) if expected is ... else expected
    return await store.apply_segment(
        session, participant, seq, vector(seq), state_after(seq), score(speech_seconds=7.0 * (seq + 1)), expected,
        state_rows=row_of(seq), **kw
    )


def run(coroutine):
    return asyncio.run(coroutine)


def all_keys(url, cluster=False) -> set[bytes]:
    """Every key on the server, or on every master of the cluster."""
    if not cluster:
        with redis.Redis.from_url(url) as client:
            return set(client.keys("*"))
    client = RedisCluster.from_url(url)
    try:
        return {key for node in client.get_primaries() for key in client.keys("*", target_nodes=node)}
    finally:
        client.close()


@pytest.fixture(params=["single", "cluster"])
def backend(request):
    """(url, cluster?) for the same test on one server and on a 3-master cluster."""
    if request.param == "single":
        return request.getfixturevalue("redis_url"), False
    return request.getfixturevalue("redis_cluster_url"), True


# -- apply: exactly once, in order -----------------------------------------------


def test_segments_apply_in_order_and_round_trip_bytes(backend):
    url, cluster = backend

    async def scenario():
        async with open_store(url, cluster=cluster) as store:
            record = await store.claim_session("sess-1", "part-1", "dev-1")
            assert record.created and record.applied_seq is None and record.latest is None
            for seq in range(5):
                result = await apply(store, "sess-1", "part-1", seq)
                assert result.status is ApplyStatus.APPLIED
                assert result.applied_seq == seq
                assert result.offset == result.participant_offset == result.score["offset"]
            applied, state, latest, rows = await store.load("sess-1")
            assert applied == 4
            assert state == state_after(4)
            assert rows == rows_until(4)
            assert latest["seq"] == 4 and latest["segments"] == 5 and latest["speech_seconds"] == 35.0
            assert latest["offset"] == result.offset
            assert latest == await store.latest_score("sess-1")
            vectors = await store.segment_vectors("sess-1")
            assert vectors == [vector(seq) for seq in range(5)]
            np.testing.assert_array_equal(np.frombuffer(vectors[3], np.float32), np.frombuffer(vector(3), np.float32))

            again = await store.claim_session("sess-1", "part-1", "dev-2")
            assert not again.created and again.applied_seq == 4 and again.segments == 5
            assert again.latest == latest

    run(scenario())


def test_a_duplicate_seq_writes_nothing(backend):
    url, cluster = backend

    async def scenario():
        async with open_store(url, cluster=cluster) as store:
            await store.claim_session("sess-d", "part-d")
            for seq in range(3):
                await apply(store, "sess-d", "part-d", seq)
            before = await store.read_updates(session_id="sess-d")
            resend = await store.apply_segment(
                "sess-d", "part-d", 1, b"\x01" * 4 * DIM, b"other state", score(probability=0.9), 0
            )
            assert resend.status is ApplyStatus.DUPLICATE and resend.duplicate
            assert resend.applied_seq == 2 and resend.offset is None and resend.score is None
            applied, state, _, rows = await store.load("sess-d")
            assert (applied, state, rows) == (2, state_after(2), rows_until(2))
            assert (await store.segment_vectors("sess-d"))[1] == vector(1)
            after = await store.read_updates(session_id="sess-d")
            assert after.updates == before.updates

    run(scenario())


def test_a_gap_is_refused_and_a_stale_writer_conflicts(backend):
    url, cluster = backend

    async def scenario():
        async with open_store(url, cluster=cluster) as store:
            await store.claim_session("sess-g", "part-g")
            first_missing = await apply(store, "sess-g", "part-g", 1, expected=0)
            assert first_missing.status is ApplyStatus.GAP and first_missing.applied_seq is None
            await apply(store, "sess-g", "part-g", 0)
            await apply(store, "sess-g", "part-g", 1)
            gap = await apply(store, "sess-g", "part-g", 3)
            assert gap.status is ApplyStatus.GAP and gap.applied_seq == 1
            # Right seq, but the state was computed on top of seq 0, not 1.
            stale = await apply(store, "sess-g", "part-g", 2, expected=0)
            assert stale.status is ApplyStatus.CONFLICT and stale.applied_seq == 1
            applied, state, latest, rows = await store.load("sess-g")
            assert (applied, state, latest["seq"], rows) == (1, state_after(1), 1, rows_until(1))
            assert len(await store.segment_vectors("sess-g")) == 2
            assert len((await store.read_updates(session_id="sess-g")).updates) == 2

    run(scenario())


def test_concurrent_writers_of_one_seq_exactly_one_wins(redis_url):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            # Separate clients: separate connections, really concurrent scripts.
            stores = [await stack.enter_async_context(open_store(redis_url)) for _ in range(6)]
            await stores[0].claim_session("sess-c", "part-c")
            winners = []
            for seq in range(10):
                expected = seq - 1 if seq else None
                results = await asyncio.gather(
                    *(
                        store.apply_segment(
                            "sess-c", "part-c", seq, vector(seq), state_after(seq) + bytes([writer]), score(), expected,
                            state_rows=row_of(seq) + bytes([writer]),
                        )
                        for writer, store in enumerate(stores)
                    )
                )
                statuses = sorted(result.status for result in results)
                assert statuses == [ApplyStatus.APPLIED] + [ApplyStatus.DUPLICATE] * 5
                winner = next(i for i, result in enumerate(results) if result.applied)
                _, state, _, rows = await stores[0].load("sess-c")
                assert state == state_after(seq) + bytes([winner])
                winners.append(winner)
                # The rows hold exactly the winners' records: a refused write appends nothing.
                assert rows == b"".join(row_of(s) + bytes([w]) for s, w in enumerate(winners))
            updates = (await stores[0].read_updates(session_id="sess-c")).updates
            assert [update["seq"] for update in updates] == list(range(10))

    run(scenario())


def test_only_a_claimed_session_of_its_owner_is_written(redis_url):
    async def scenario():
        async with open_store(redis_url) as store:
            unclaimed = await apply(store, "sess-u", "part-u", 0)
            assert unclaimed.status is ApplyStatus.UNCLAIMED
            await store.claim_session("sess-o", "owner")
            with pytest.raises(SessionOwnershipError):
                await store.claim_session("sess-o", "intruder", "dev")
            assert await store.session_owner("sess-o") == "owner"
            # The intruder's key space stays empty: nothing was written for it.
            assert (await apply(store, "sess-o", "intruder", 0)).status is ApplyStatus.UNCLAIMED
            assert [key async for key in store.client.scan_iter(match=participant_prefix("intruder") + "*")] == []
            assert [key async for key in store.client.scan_iter(match="*sess-u*")] == []

    run(scenario())


def test_an_ended_session_keeps_its_data_and_takes_no_new_segments(redis_url):
    async def scenario():
        async with open_store(redis_url, ttl_seconds=1000) as store:
            await store.claim_session("sess-e", "part-e")
            await apply(store, "sess-e", "part-e", 0)
            assert await store.end_session("sess-e") is True
            assert await store.end_session("no-such-session") is False
            assert (await apply(store, "sess-e", "part-e", 0)).status is ApplyStatus.DUPLICATE
            assert (await apply(store, "sess-e", "part-e", 1)).status is ApplyStatus.ENDED
            record = await store.claim_session("sess-e", "part-e")
            assert record.ended and record.applied_seq == 0
            assert (await store.load("sess-e")).state == state_after(0)

    run(scenario())


def test_keys_carry_the_model_version(redis_url):
    async def scenario():
        async with open_store(redis_url) as old, open_store(redis_url, model_version="test-model-2") as new:
            await old.claim_session("sess-v", "part-v")
            await apply(old, "sess-v", "part-v", 0)
            assert await new.load("sess-v") == (None, None, None, b"")
            await new.claim_session("sess-v", "part-v")  # same owner, new model: starts from scratch
            assert (await apply(new, "sess-v", "part-v", 0)).applied
            assert (await old.load("sess-v")).applied_seq == 0

    run(scenario())


def test_bad_inputs_are_refused_before_anything_is_written(redis_url):
    async def scenario():
        async with open_store(redis_url) as store:
            await store.claim_session("sess-b", "part-b")
            good = dict(vector=vector(0), state=state_after(0), score=score(), expected_prev_seq=None)
            bad_calls = [
                dict(good, score={**score(), "notice": "x"}),
                dict(good, score={**score(), "seq": 7}),
                dict(good, score={**score(), "participant_id": "someone-else"}),
                dict(good, score=score(probability=float("nan"))),
                dict(good, score=score(probability=1.5)),
                dict(good, score={**score(probability=0.9), "above_threshold": False}),
                # no label before the evidence rule's minimum speech
                dict(good, score={**score(probability=0.9), "evidence_sufficient": False}),
                dict(good, score={**score(), "evidence_sufficient": "yes"}),
                dict(good, score={k: v for k, v in score().items() if k != "speech_seconds"}),
                dict(good, vector=b"\x00" * 5),
                dict(good, vector=b""),
                dict(good, state=b""),
                dict(good, expected_prev_seq=-1),
            ]
            for call in bad_calls:
                with pytest.raises(ValueError):
                    await store.apply_segment("sess-b", "part-b", 0, **call)
            for seq in (-1, 2**53, True, "0"):
                with pytest.raises(ValueError):
                    await store.apply_segment("sess-b", "part-b", seq, **good)
            for session, participant in [("bad id", "p"), ("s", "{p}"), ("s" * 65, "p"), ("s", "p*")]:
                with pytest.raises(ValueError):
                    await store.apply_segment(session, participant, 0, **good)
            assert (await store.load("sess-b")).applied_seq is None
            assert (await store.apply_segment("sess-b", "part-b", 0, **good)).applied

    run(scenario())


# -- score streams -------------------------------------------------------------


def test_streams_carry_updates_in_order_with_resumable_offsets(backend):
    url, cluster = backend

    async def scenario():
        async with open_store(url, cluster=cluster) as store:
            await store.claim_session("sess-a", "part-s")
            await store.claim_session("sess-b", "part-s")
            applied = []
            for seq in range(4):
                for session in ("sess-a", "sess-b"):
                    applied.append((await apply(store, session, "part-s", seq)).score)

            # Resume page by page from each next_offset: every update once, in order.
            seen, offset = [], ""
            while True:
                batch = await store.read_updates(participant_id="part-s", after_offset=offset, count=3)
                if not batch.updates:
                    break
                seen += batch.updates
                offset = batch.next_offset
            assert seen == applied

            session_a = (await store.read_updates(session_id="sess-a")).updates
            assert session_a == [update for update in applied if update["session_id"] == "sess-a"]
            # One offset names the same update in the session and participant streams.
            middle = session_a[1]["offset"]
            rest = await store.read_updates(participant_id="part-s", after_offset=middle)
            assert rest.updates == applied[applied.index(session_a[1]) + 1 :]
            assert not rest.trimmed

            # "$" skips history and then sees exactly what comes next, even if it
            # arrives while the reader is blocked.
            latest_only = await store.read_updates(session_id="sess-a", after_offset="$")
            assert latest_only.updates == [] and latest_only.next_offset == session_a[-1]["offset"]
            reader = asyncio.create_task(store.read_updates(session_id="sess-a", after_offset="$", block_ms=5000))
            await asyncio.sleep(0.2)
            new = (await apply(store, "sess-a", "part-s", 4)).score
            batch = await asyncio.wait_for(reader, 5)
            assert batch.updates == [new] and batch.next_offset == new["offset"]

            nothing = await store.read_updates(session_id="sess-a", after_offset=new["offset"], block_ms=50)
            assert nothing.updates == [] and nothing.next_offset == new["offset"]

    run(scenario())


def test_a_trimmed_stream_says_updates_were_missed(redis_url):
    async def scenario():
        async with open_store(redis_url, stream_maxlen=1) as store:
            await store.claim_session("sess-t", "part-t")
            # MAXLEN ~ trims whole radix-tree nodes (100 entries by default).
            for seq in range(250):
                await apply(store, "sess-t", "part-t", seq)
            batch = await store.read_updates(session_id="sess-t", count=1000)
            assert batch.trimmed
            assert 0 < len(batch.updates) < 250 and batch.updates[-1]["seq"] == 249
            caught_up = await store.read_updates(session_id="sess-t", after_offset=batch.next_offset)
            assert not caught_up.trimmed

    run(scenario())


@pytest.mark.parametrize(
    "offset",
    ["abc", "1-", "-1", "1-2-3", " 1-2", "1-2 ", "1.5-0", "99999999999999999999-0", "18446744073709551616-0", None, 5],
)
def test_malformed_offsets_are_value_errors(redis_url, offset):
    with pytest.raises(ValueError):
        parse_offset(offset)

    async def scenario():
        async with open_store(redis_url) as store:
            with pytest.raises(ValueError):
                await store.read_updates(participant_id="part-m", after_offset=offset)

    run(scenario())


def test_well_formed_offsets_and_bad_read_arguments(redis_url):
    assert parse_offset("") == "0-0"
    assert parse_offset("0") == "0-0"
    assert parse_offset("$") == "$"
    assert parse_offset("1795637261019-1") == "1795637261019-1"
    assert parse_offset("18446744073709551615-18446744073709551615")

    async def scenario():
        async with open_store(redis_url) as store:
            with pytest.raises(SessionNotFoundError):
                await store.read_updates(session_id="never-started")
            for kwargs in [{}, {"participant_id": "p", "count": 0}, {"participant_id": "p", "block_ms": -1}]:
                with pytest.raises(ValueError):
                    await store.read_updates(**kwargs)
            empty = await store.read_updates(participant_id="nobody-yet", after_offset="$")
            assert empty.updates == [] and empty.next_offset == "0-0"

    run(scenario())


# -- retention and privacy ----------------------------------------------------------


def test_every_key_of_a_session_gets_the_ttl(redis_url):
    async def scenario():
        async with open_store(redis_url, ttl_seconds=1000, store_audio=True) as store:
            await store.claim_session("sess-ttl", "part-ttl")
            await apply(store, "sess-ttl", "part-ttl", 0, audio=b"\x01\x00" * 100)
            keys = store.keys("part-ttl", "sess-ttl")
            existing = [key for key in keys.all() if await store.client.exists(key)]
            assert existing == keys.all(), "audio is stored, so every key of the session exists"
            directories = [keys.index, directory_key(store.model_version)]
            for key in existing + directories:
                assert 990 < await store.client.ttl(key) <= 1000, key
            # Every key that exists is one of the session's keys or a directory that lists it.
            found = {key.decode() async for key in store.client.scan_iter(match="ms:*")}
            assert found == set(keys.all()) | set(directories) | {VERSIONS_KEY}

        async with open_store(redis_url, ttl_seconds=0) as forever:
            await forever.claim_session("sess-ttl", "part-ttl")
            await apply(forever, "sess-ttl", "part-ttl", 1)
            for key in keys.all():
                assert await forever.client.ttl(key) == -1, key

    run(scenario())


def test_raw_audio_is_kept_only_when_configured(redis_url):
    pcm = {seq: bytes([seq]) * 320 for seq in range(2)}

    async def scenario():
        async with open_store(redis_url) as default, open_store(redis_url, store_audio=True) as keeping:
            await default.claim_session("sess-na", "part-a")
            await keeping.claim_session("sess-a", "part-a")
            for seq in range(2):
                await apply(default, "sess-na", "part-a", seq, audio=pcm[seq])
                await apply(keeping, "sess-a", "part-a", seq, audio=pcm[seq])
            assert await default.segment_audio("sess-na") == {}
            assert not await default.client.exists(default.keys("part-a", "sess-na").audio)
            assert await keeping.segment_audio("sess-a") == pcm

    run(scenario())


def test_forget_deletes_every_key_of_a_participant_and_nothing_else(backend):
    url, cluster = backend

    async def scenario():
        async with open_store(url, cluster=cluster, store_audio=True) as store, open_store(
            url, cluster=cluster, model_version="test-model-2"
        ) as other_model:
            for participant, sessions in {"gone": ["g1", "g2"], "stays": ["s1", "s2"]}.items():
                for session in sessions:
                    await store.claim_session(session, participant)
                    for seq in range(3):
                        await apply(store, session, participant, seq, audio=b"\x00\x01")
            await other_model.claim_session("g1", "gone")
            await apply(other_model, "g1", "gone", 0)

            everything = all_keys(url, cluster)
            owners = {owner_key("g1").encode(), owner_key("g2").encode()}
            mine = {key for key in everything if key.startswith(participant_prefix("gone").encode())} | owners
            # model 1: 2 sessions x (hash, vectors, audio, scorer rows, stream) + session directory; model 2:
            # hash, vectors, scorer rows, stream + session directory; one participant stream for both; 2 owner keys.
            assert len(mine) == 2 * 5 + 1 + 4 + 1 + 1 + 2

            assert await store.forget_participant("gone") == len(mine)
            # the participant directory of model 2 listed only "gone", so it went with the last member
            emptied = directory_key("test-model-2").encode()
            assert all_keys(url, cluster) == everything - mine - {emptied}
            assert await store.client.zrange(directory_key(VERSION), 0, -1) == [b"stays"]

            assert await store.session_owner("g1") is None
            assert (await apply(store, "g2", "gone", 3)).status is ApplyStatus.UNCLAIMED
            assert (await store.load("s1")).applied_seq == 2
            assert await store.forget_participant("gone") == 0

    run(scenario())


# -- durability ---------------------------------------------------------------------


def test_an_applied_segment_survives_sigkill_with_appendfsync_always(tmp_path):
    with RedisProcess(data_dir=tmp_path, appendonly=True, appendfsync="always") as server:

        async def before_crash():
            async with open_store(server.url) as store:
                await store.claim_session("sess-k", "part-k")
                for seq in range(2):
                    assert (await apply(store, "sess-k", "part-k", seq)).applied

        run(before_crash())
        server.kill()  # no shutdown, no final fsync: only what each reply promised
        server.start()

        async def after_restart():
            async with open_store(server.url) as store:
                applied, state, latest, rows = await store.load("sess-k")
                assert (applied, state, latest["seq"], rows) == (1, state_after(1), 1, rows_until(1))
                assert await store.segment_vectors("sess-k") == [vector(0), vector(1)]
                # The restarted server has no cached scripts: NOSCRIPT -> SCRIPT LOAD, transparently.
                assert (await apply(store, "sess-k", "part-k", 2)).applied
                updates = (await store.read_updates(session_id="sess-k")).updates
                assert [update["seq"] for update in updates] == [0, 1, 2]

        run(after_restart())


# -- cluster ------------------------------------------------------------------------


def test_one_session_and_its_participant_stream_share_one_cluster_slot(redis_cluster_url):
    client = RedisCluster.from_url(redis_cluster_url)
    slots = set()
    owners = set()
    for participant in ("alice", "bob", "carol", "dave", "erin"):
        keys = SessionKeys.build(participant, f"session-of-{participant}", VERSION)
        # Ask the server, not our own CRC: the server decides where keys go.
        script_slots = {client.cluster_keyslot(key) for key in [*keys.script_keys(), keys.index]}
        assert len(script_slots) == 1, keys
        slots |= script_slots
        owners.add(client.get_node_from_key(keys.session).name)
    client.close()
    assert len(slots) == 5
    assert len(owners) > 1, "participants spread over the masters"


def test_the_apply_script_runs_on_the_master_that_owns_the_slot(redis_cluster_url):
    async def scenario():
        async with open_store(redis_cluster_url, cluster=True) as store:
            await store.claim_session("sess-n", "part-n")
            await apply(store, "sess-n", "part-n", 0)
            keys = store.keys("part-n", "sess-n")
            slot = redis.crc.key_slot(keys.session.encode())
            node = store.client.get_node_from_key(keys.session)
            counted = await store.client.execute_command("CLUSTER COUNTKEYSINSLOT", slot, target_nodes=node)
            # session hash, vectors, scorer rows, session stream, participant stream, session directory
            assert counted == 6

    run(scenario())


# -- the session directory ------------------------------------------------------------


def test_the_directory_pages_through_batches_and_drops_expired_sessions(backend):
    """More sessions than one directory batch, some gone: every live one listed once, in order."""
    url, cluster = backend

    async def scenario():
        clock = iter(range(10**6))
        async with open_store(url, cluster=cluster) as store:
            store._clock = lambda: 1000.0 + next(clock)  # distinct, increasing start times
            sessions = {"pa": [f"a{i:03d}" for i in range(450)], "pb": [f"b{i:03d}" for i in range(5)]}
            for participant, ids in sessions.items():
                for session in ids:
                    await store.claim_session(session, participant)
                    await apply(store, session, participant, 0)
            gone = {f"a{i:03d}" for i in range(0, 450, 3)}  # a third expired (their records deleted)
            for session in gone:
                await store.client.delete(store.keys("pa", session).session)

            def expected(participant):
                return [(participant, s) for s in reversed(sessions[participant]) if s not in gone]

            for page_size in (1000, 7):  # the first pass meets the stale entries mid-batch
                listed, cursor = [], None
                while True:
                    page, cursor = await store.list_sessions(None, page_size=page_size, cursor=cursor)
                    listed += [(s.participant_id, s.session_id) for s in page]
                    if cursor is None:
                        break
                assert listed == expected("pa") + expected("pb"), page_size
            # the expired ones were pruned from the directory as it was read
            assert await store.client.zcard(store.keys("pa", "a001").index) == 450 - len(gone)
            only_b, cursor = await store.list_sessions(["pb"], page_size=2)
            assert [s.session_id for s in only_b] == ["b004", "b003"] and cursor is not None

    run(scenario())
