"""Rolling out a new model version under load: two replicas on one model folder, ten live sessions.

The procedure of docs/models.md: the new folder appears, both replicas load it, then `current` changes.
Real servers on 127.0.0.1, real Redis, real tiny models.
"""
from __future__ import annotations

import contextlib
import shutil
import threading

import grpc

from moodstream.v1 import moodstream_pb2 as pb
from server_harness import chunk, end, header, make_chunks, offline_score, stub_for, tiny_model
from test_model_repository import info, models_server, set_current, wait_for

LIVE = 10
CHUNKS = 6
SWITCH_AFTER = 3   # chunks each live session has applied when the version changes


class LiveSession:
    """One session streaming from a thread: chunks before the switch, then (maybe on the other replica) the rest."""

    def __init__(self, index: int, ports: list[int], tokens, pcm: list[bytes], switched: threading.Event) -> None:
        self.session_id = f"live-{index}"
        self.index = index
        self.ports = ports
        self.tokens = tokens
        self.pcm = pcm
        self.switched = switched
        self.halfway = threading.Event()
        self.responses: list[pb.StreamResponse] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=self.session_id, daemon=True)

    def _requests(self, seqs, finish: bool, wait_for_switch: bool):
        yield header(self.session_id, "p1")
        for seq in seqs:
            yield chunk(seq, self.pcm[seq])
        if wait_for_switch:
            self.switched.wait(120)
            for seq in range(SWITCH_AFTER, CHUNKS):
                yield chunk(seq, self.pcm[seq])
        if finish:
            yield end(CHUNKS - 1)

    def _stream(self, port: int, requests) -> None:
        with stub_for(port) as stub:
            for response in stub.Stream(requests, metadata=self.tokens.metadata("agent"), timeout=180):
                self.responses.append(response)
                if response.WhichOneof("message") == "ack" and response.ack.seq == SWITCH_AFTER - 1:
                    self.halfway.set()

    def _run(self) -> None:
        try:
            first = self.ports[self.index % 2]
            if self.index % 2:
                # Odd sessions stay on one open stream across the switch.
                self._stream(first, self._requests(range(SWITCH_AFTER), True, True))
            else:
                # Even sessions break off, then resume on the other replica after the switch.
                self._stream(first, self._requests(range(SWITCH_AFTER), False, False))
                self.switched.wait(120)
                self._stream(self.ports[(self.index + 1) % 2], self._requests(range(SWITCH_AFTER, CHUNKS), True,
                                                                              False))
        except BaseException as error:  # reported by the test
            self.error = error
            self.halfway.set()

    def acked(self) -> list[int]:
        return sorted(r.ack.seq for r in self.responses if r.WhichOneof("message") == "ack" and not r.ack.duplicate)

    def scores(self) -> list[pb.ScoreUpdate]:
        return [r.score for r in self.responses if r.WhichOneof("message") == "score"]


def stored_updates(stub, tokens, session_id: str, count: int) -> list[pb.ScoreUpdate]:
    updates = []
    with contextlib.suppress(grpc.RpcError):
        for update in stub.Subscribe(pb.SubscribeRequest(session_id=session_id), metadata=tokens.metadata("admin"),
                                     timeout=5):
            updates.append(update)
            if len(updates) == count:
                break
    return updates


def test_switching_current_under_ten_live_sessions_on_two_replicas(tmp_path, redis_url, tokens):
    old, new = tiny_model(0), tiny_model(1)
    folder = tmp_path / "models"
    old.save_pretrained(folder / "v1")
    staged = tmp_path / "staged"
    new.save_pretrained(staged / "v2")
    pcm = {i: make_chunks(CHUNKS, seed=100 + i) for i in range(LIVE + 4)}
    switched = threading.Event()
    with models_server(folder, redis_url, tokens) as first, models_server(folder, redis_url, tokens) as second:
        ports = [first.port, second.port]
        live = [LiveSession(i, ports, tokens, pcm[i], switched) for i in range(LIVE)]
        for session in live:
            session.thread.start()
        for session in live:
            assert session.halfway.wait(120) and session.error is None, (session.session_id, session.error)

        # The rollout, while every live session is mid-way: the folder appears, both replicas hold it,
        # then current changes.
        shutil.copytree(staged / "v2", folder / ".v2")
        (folder / ".v2").rename(folder / "v2")
        for port in ports:
            with stub_for(port) as stub:
                wait_for(lambda: new.model_version in [v.model_version for v in info(stub, tokens).versions],
                         "both replicas to hold the new version")
        set_current(folder, "v2")
        for port in ports:
            with stub_for(port) as stub:
                wait_for(lambda: info(stub, tokens).model_version == new.model_version, "the switch on each replica")
        switched.set()

        # Sessions started after the switch, on either replica.
        later = []
        for index in range(LIVE, LIVE + 4):
            with stub_for(ports[index % 2]) as stub:
                requests = [header(f"later-{index}", "p1")] + [chunk(s, c) for s, c in enumerate(pcm[index])]
                later.append(list(stub.Stream(iter(requests + [end(CHUNKS - 1)]),
                                              metadata=tokens.metadata("agent"), timeout=120)))
        for session in live:
            session.thread.join(180)
            assert not session.thread.is_alive() and session.error is None, (session.session_id, session.error)

        with stub_for(first.port) as stub:
            for session in live:
                # Zero chunks lost: every seq acknowledged as applied exactly once, the session ended.
                assert session.acked() == list(range(CHUNKS)), session.session_id
                reply = stub.GetScore(pb.GetScoreRequest(session_id=session.session_id),
                                      metadata=tokens.metadata("admin"), timeout=10)
                assert reply.segments == CHUNKS and reply.session_state == pb.SESSION_STATE_ENDED
                # No session mixes versions: every score, delivered and stored, is the old version's, and
                # the last equals the old model's offline score over the session's audio.
                stored = stored_updates(stub, tokens, session.session_id, CHUNKS)
                versions = {s.model_version for s in session.scores()} | {u.model_version for u in stored}
                assert versions == {old.model_version}, session.session_id
                assert abs(reply.probability - offline_score(old, session.pcm)) < 1e-4
            for index, responses in zip(range(LIVE, LIVE + 4), later):
                scores = [r.score for r in responses if r.WhichOneof("message") == "score"]
                assert [s.model_version for s in scores] == [new.model_version] * CHUNKS
                assert abs(scores[-1].probability - offline_score(new, pcm[index])) < 1e-4
            listed = stub.ListSessions(pb.ListSessionsRequest(participant_id="p1"),
                                       metadata=tokens.metadata("admin"), timeout=10)
            by_version = {}
            for summary in listed.sessions:
                by_version.setdefault(summary.model_version, set()).add(summary.session_id)
            assert by_version == {old.model_version: {s.session_id for s in live},
                                  new.model_version: {f"later-{i}" for i in range(LIVE, LIVE + 4)}}
