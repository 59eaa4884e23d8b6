"""The chunker: exact chunk sizes, start times, speech statistics, and the last-partial rule."""
import numpy as np
import pytest

from moodstream.agent import Chunker, SpeechChunk
from moodstream.speech.vad import Piece

RATE = 16000
FRAME = 480  # 30 ms


def kept(start: int, length: int = FRAME, voted: bool = True) -> Piece:
    # Sample values are the session-clock sample index (mod 2^15): easy to check positions.
    samples = (np.arange(start, start + length) % 32768).astype(np.int16)
    return Piece(start, samples, length, kept=True, voted_speech=voted)


def dropped(start: int, length: int, reason: str = "silence") -> Piece:
    return Piece(start, None, length, kept=False, reason=reason)


def feed(chunker: Chunker, pieces) -> list[SpeechChunk]:
    chunks = []
    for piece in pieces:
        chunks += chunker.add(piece)
    return chunks


def speech_run(start: int, seconds: float, voted: bool = True) -> list[Piece]:
    frames = -(-int(round(seconds * RATE)) // FRAME)  # whole frames covering `seconds`
    return [kept(start + i * FRAME, voted=voted) for i in range(frames)]


def test_chunks_hold_exactly_chunk_seconds_of_speech_with_their_start_times():
    chunker = Chunker(chunk_seconds=7.0)
    pieces = [dropped(0, 2 * RATE)] + speech_run(2 * RATE, 9.0) + [dropped(11 * RATE, 5 * RATE)] + speech_run(16 * RATE, 9.0)
    chunks = feed(chunker, pieces)
    assert [c.seq for c in chunks] == [0, 1]
    assert all(len(c.pcm) == 7 * RATE * 2 and c.speech_seconds == 7.0 for c in chunks)
    assert chunks[0].start_seconds == 2.0
    # Chunk 1 starts with the 2 s left of the first run (from 9 s), then jumps over the 5 s silence.
    assert chunks[1].start_seconds == 9.0
    first_samples = chunks[1].samples
    assert first_samples[0] == (9 * RATE) % 32768
    assert first_samples[2 * RATE] == (16 * RATE) % 32768
    assert chunks[0].dropped_seconds == 2.0  # silence before it
    assert chunks[1].dropped_seconds == 5.0  # silence since chunk 0
    assert chunks[0].vad_frames == pytest.approx(7.0 * RATE / FRAME, abs=1)
    assert chunker.buffered_seconds == pytest.approx(4.0, abs=FRAME / RATE)


def test_a_frame_across_the_chunk_boundary_is_split_not_lost():
    chunker = Chunker(chunk_seconds=4.0, min_last_chunk_seconds=1.0)
    pieces = speech_run(0, 5.0)  # 166 frames: 4 s ends inside frame 133
    chunks = feed(chunker, pieces)
    last, tail = chunker.finish()
    all_samples = np.concatenate([c.samples for c in chunks + last])
    assert np.array_equal(all_samples, (np.arange(len(pieces) * FRAME) % 32768).astype(np.int16))
    assert last[0].start_seconds == 4.0
    assert tail is None


def test_hangover_frames_are_kept_but_not_counted_as_vad_frames():
    chunker = Chunker(chunk_seconds=4.0)
    pieces = speech_run(0, 2.0, voted=True) + speech_run(2 * RATE, 2.0, voted=False)
    (chunk,) = feed(chunker, pieces)
    assert chunk.vad_frames == len(speech_run(0, 2.0))


@pytest.mark.parametrize("last_seconds, sent", [(2.9, False), (3.0, True), (6.99, True)])
def test_the_last_partial_chunk_is_sent_only_if_long_enough(last_seconds, sent):
    chunker = Chunker(chunk_seconds=7.0, min_last_chunk_seconds=3.0)
    total = 7.0 + last_seconds
    samples = int(round(total * RATE))
    chunks = feed(chunker, [kept(0, samples)])
    last, tail = chunker.finish()
    assert len(chunks) == 1
    if sent:
        assert tail is None and len(last) == 1
        assert last[0].seq == 1 and last[0].speech_seconds == pytest.approx(last_seconds)
        assert last[0].start_seconds == 7.0
    else:
        assert last == [] and tail is not None
        assert tail.seq == 1 and tail.start_seconds == 7.0
        assert tail.speech_seconds == pytest.approx(last_seconds)
        assert tail.min_last_chunk_seconds == 3.0


def test_no_speech_at_all_gives_no_chunk_and_no_drop():
    chunker = Chunker()
    assert feed(chunker, [dropped(0, 10 * RATE)]) == []
    assert chunker.finish() == ([], None)


def test_seq_numbering_can_continue_a_session():
    chunker = Chunker(chunk_seconds=4.0, first_seq=5)
    chunks = feed(chunker, speech_run(0, 8.0))
    assert [c.seq for c in chunks] == [5, 6]


@pytest.mark.parametrize("chunk_seconds, minimum, message", [
    (3.9, 3.0, "4-9 s"), (9.1, 3.0, "4-9 s"), (7.0, 0.0, "> 0"), (7.0, 7.5, "<= the chunk length"),
])
def test_chunk_lengths_outside_the_studied_range_are_refused(chunk_seconds, minimum, message):
    with pytest.raises(ValueError, match=message):
        Chunker(chunk_seconds=chunk_seconds, min_last_chunk_seconds=minimum)
