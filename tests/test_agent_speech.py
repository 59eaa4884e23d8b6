"""Speech keeping on real generated recordings: webrtcvad, hangover, onset and prompt gating.

The interview recording below has the subject speaking, the kiosk playing
interviewer prompts (plus a quieter echo after one), and long silences, at
known times. Every sample of every chunk is traced back to the time it came
from in the file, so the assertions are about exactly what would be sent.
"""
import numpy as np
import pytest
import soundfile

from moodstream.agent import CaptureSettings, FileSource, PromptGate, SpeechFilter, capture_chunks, load_prompt_intervals
from moodstream.speech.vad import DROP_ONSET, DROP_PROMPT, DROP_WARMUP
from test_agent_signals import RATE, quiet, speech_like

# (kind, start s, end s). "echo" is the room's echo of the first prompt, after the kiosk
# reported the prompt finished: the echo tail must drop it.
TIMELINE = [
    ("quiet", 0.0, 2.0), ("prompt", 2.0, 6.0), ("echo", 6.0, 6.25), ("quiet", 6.25, 7.5),
    ("subject", 7.5, 16.5), ("quiet", 16.5, 22.0), ("prompt", 22.0, 25.0), ("quiet", 25.0, 26.0),
    ("subject", 26.0, 31.0), ("quiet", 31.0, 40.0), ("subject", 40.0, 44.5), ("quiet", 44.5, 47.0),
]
PROMPTS = [(start, end) for kind, start, end in TIMELINE if kind == "prompt"]
SUBJECT = [(start, end) for kind, start, end in TIMELINE if kind == "subject"]
ECHO_TAIL = 0.3
# webrtcvad itself votes speech for ~1-4 frames after speech stops; the agent's hangover adds to that.
VAD_LAG = 0.15


def render(timeline) -> np.ndarray:
    parts = []
    for index, (kind, start, end) in enumerate(timeline):
        seconds = end - start
        if kind == "quiet":
            parts.append(quiet(seconds, seed=100 + index))
        elif kind == "prompt":  # the interviewer: another voice, as loud as the subject
            parts.append(speech_like(seconds, pitch_hz=210, seed=200 + index))
        elif kind == "echo":
            parts.append(speech_like(seconds, pitch_hz=210, seed=300 + index, level=0.15))
        else:
            parts.append(speech_like(seconds, pitch_hz=120, seed=400 + index))
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def interview(tmp_path_factory):
    audio = render(TIMELINE)
    path = tmp_path_factory.mktemp("interview") / "interview.wav"
    soundfile.write(path, audio, RATE, subtype="PCM_16")
    return path, audio


def trace(chunk_samples: np.ndarray, first_sample: int, audio: np.ndarray, frame: int) -> list[tuple[int, int]]:
    """Where in `audio` each run of the chunk's samples comes from: [(start, end), ...] in samples.

    Kept audio is whole VAD frames on the frame grid (a chunk may start or end mid-frame),
    and every frame of the generated audio is unique, so the trace is unambiguous."""
    spans = []
    position, index = first_sample, 0
    while index < len(chunk_samples):
        run = 0
        limit = min(len(chunk_samples) - index, len(audio) - position)
        while run < limit and chunk_samples[index + run] == audio[position + run]:
            run += 1
        if run == 0:
            # A jump: the next kept audio starts on a later frame boundary.
            piece = chunk_samples[index:index + frame]
            grid = range((position + frame - 1) // frame * frame, len(audio) - len(piece) + 1, frame)
            matches = [q for q in grid if np.array_equal(audio[q:q + len(piece)], piece)]
            assert matches, f"chunk samples at offset {index} do not come from the recording"
            position = matches[0]
            continue
        spans.append((position, position + run))
        position += run
        index += run
    return spans


def overlaps(span, interval) -> bool:
    return span[0] / RATE < interval[1] and span[1] / RATE > interval[0]


def test_only_the_subjects_speech_is_chunked_and_every_sample_is_traceable(interview):
    path, audio = interview
    settings = CaptureSettings(chunk_seconds=7.0, min_last_chunk_seconds=3.0, echo_tail_seconds=ECHO_TAIL)
    gate = PromptGate(echo_tail_seconds=ECHO_TAIL)
    for start, end in PROMPTS:
        gate.add_interval(start, end)
    result = capture_chunks(FileSource(path), settings, gate)

    frame = RATE * settings.frame_ms // 1000
    spans = []
    for chunk in result.chunks:
        chunk_spans = trace(chunk.samples, round(chunk.start_seconds * RATE), audio, frame)
        assert chunk_spans[0][0] == round(chunk.start_seconds * RATE)
        assert chunk_spans[-1][1] == round(chunk.end_seconds * RATE)
        spans += chunk_spans
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "kept audio must be in time order, never twice"

    frame_seconds = frame / RATE  # a kept frame may straddle the start of the subject's turn
    for span in spans:
        assert any(start - frame_seconds < span[0] / RATE and span[1] / RATE <= end + settings.hangover_ms / 1000 + VAD_LAG
                   for start, end in SUBJECT), f"kept {span[0] / RATE:.2f}-{span[1] / RATE:.2f} s is not the subject"
        for start, end in PROMPTS:
            assert not overlaps(span, (start, end + ECHO_TAIL)), "prompt or echo audio was kept"

    for start, end in SUBJECT:
        covered = sum(min(b, end * RATE) - max(a, start * RATE) for a, b in spans if overlaps((a, b), (start, end)))
        assert covered / RATE >= 0.97 * (end - start), f"subject speech {start}-{end} s was not kept"

    # 18.5 s of subject speech (+ hangovers) -> two full 7 s chunks and a last one of >= 3 s.
    assert [c.seq for c in result.chunks] == [0, 1, 2]
    assert [c.speech_seconds for c in result.chunks[:2]] == [7.0, 7.0]
    assert 4.5 < result.chunks[2].speech_seconds < 7.0
    assert result.dropped_tail is None
    assert result.chunks[0].start_seconds == pytest.approx(SUBJECT[0][0], abs=0.1)
    assert result.dropped_seconds[DROP_PROMPT] >= sum(end + ECHO_TAIL - start for start, end in PROMPTS) - 0.06
    # Everything on the session clock is accounted for, kept or dropped for a reason.
    assert result.kept_seconds + sum(result.dropped_seconds.values()) == pytest.approx(len(audio) / RATE)
    assert sum(c.speech_seconds + c.dropped_seconds for c in result.chunks) <= len(audio) / RATE


def test_without_gating_the_prompts_would_be_sent(interview):
    """The control: the prompts are speech to webrtcvad, so only the gate keeps them out."""
    path, audio = interview
    result = capture_chunks(FileSource(path), CaptureSettings(), PromptGate())
    frame = RATE * 30 // 1000
    spans = [span for chunk in result.chunks
             for span in trace(chunk.samples, round(chunk.start_seconds * RATE), audio, frame)]
    assert any(overlaps(span, PROMPTS[0]) for span in spans)


def test_live_prompt_calls_gate_like_known_intervals(interview):
    """A kiosk reporting prompt_started()/prompt_finished() as playback happens gives the
    same kept audio as the intervals known up front."""
    path, _ = interview
    known = PromptGate(echo_tail_seconds=ECHO_TAIL)
    for start, end in PROMPTS:
        known.add_interval(start, end)
    expected = capture_chunks(FileSource(path), CaptureSettings(), known).chunks

    heard = {"samples": 0}
    live = PromptGate(echo_tail_seconds=ECHO_TAIL, clock=lambda: heard["samples"] / RATE)
    speech_filter = CaptureSettings().speech_filter(live)
    chunker = CaptureSettings().chunker()
    chunks = []
    events = sorted([(start, "start") for start, _ in PROMPTS] + [(end, "end") for _, end in PROMPTS])
    for block in FileSource(path, block_seconds=0.01):
        while events and events[0][0] <= heard["samples"] / RATE:
            _, what = events.pop(0)
            live.prompt_started() if what == "start" else live.prompt_finished()  # "now" = the clock
        heard["samples"] += len(block)
        for piece in speech_filter.process(block):
            chunks += chunker.add(piece)
    for piece in speech_filter.flush():
        chunks += chunker.add(piece)
    chunks += chunker.finish()[0]
    assert [(c.start_seconds, c.pcm) for c in chunks] == [(c.start_seconds, c.pcm) for c in expected]


def test_an_open_prompt_gates_until_it_finishes():
    gate = PromptGate(echo_tail_seconds=0.3)
    gate.prompt_started(5.0)
    assert not gate.blocks(4.0, 4.99)
    assert gate.blocks(4.99, 5.02)
    assert gate.blocks(1000.0, 1000.03)
    gate.prompt_finished(8.0)
    assert gate.blocks(8.2, 8.23)
    assert not gate.blocks(8.3, 8.33)
    with pytest.raises(ValueError, match="without a prompt_started"):
        gate.prompt_finished(9.0)
    with pytest.raises(ValueError, match="no session clock"):
        gate.prompt_started()


def run_filter(audio: np.ndarray, **options):
    speech_filter = SpeechFilter(**options)
    pieces = list(speech_filter.run([audio]))
    kept = np.zeros(len(audio), bool)
    for piece in pieces:
        if piece.kept:
            kept[piece.start_sample:piece.start_sample + piece.length] = True
    assert sum(p.length for p in pieces) == len(audio)
    return kept, speech_filter


def runs(mask: np.ndarray) -> list[tuple[float, float]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [(a / RATE, b / RATE) for a, b in zip(edges[::2], edges[1::2])]


def test_hangover_bridges_short_pauses_and_ends_runs_after_long_ones():
    audio = np.concatenate([quiet(1.0, seed=1), speech_like(1.5, seed=2), quiet(0.15, seed=3),
                            speech_like(1.5, seed=4), quiet(1.5, seed=5), speech_like(1.0, seed=6), quiet(1.0, seed=7)])
    kept, _ = run_filter(audio, hangover_ms=300)
    spans = runs(kept)
    assert len(spans) == 2, spans  # the 150 ms pause is bridged, the 1.5 s one is not
    assert spans[0][0] == pytest.approx(1.0, abs=0.07)
    assert 4.15 + 0.3 - 0.03 <= spans[0][1] <= 4.15 + 0.3 + VAD_LAG
    assert 5.65 - 0.03 < spans[1][0] <= 5.72  # a frame may straddle the start of speech

    no_hangover, _ = run_filter(audio, hangover_ms=0)
    assert runs(no_hangover)[-1][1] <= 6.65 + VAD_LAG
    assert no_hangover.sum() < kept.sum()


def test_a_burst_shorter_than_the_onset_does_not_start_speech():
    audio = np.concatenate([quiet(1.0, seed=1), speech_like(0.09, seed=2), quiet(1.0, seed=3)])
    kept, speech_filter = run_filter(audio, onset_ms=300)
    assert not kept.any()
    assert speech_filter.dropped_samples[DROP_ONSET] > 0
    kept, _ = run_filter(audio, onset_ms=30)
    assert kept.any()


def test_vad_warmup_is_dropped_and_reported():
    """webrtcvad votes speech on plain noise for its first frames while it adapts."""
    kept, speech_filter = run_filter(quiet(2.0, seed=9), aggressiveness=0, warmup_ms=200)
    assert not kept.any()
    assert speech_filter.dropped_samples[DROP_WARMUP] == RATE * 210 // 1000  # 7 frames of 30 ms
    kept, _ = run_filter(quiet(2.0, seed=9), aggressiveness=0, warmup_ms=0)
    assert kept.any()  # the artefact the warm-up exists for


@pytest.mark.parametrize("options, message", [
    ({"aggressiveness": 4}, "aggressiveness"),
    ({"frame_ms": 25}, "10, 20 or 30 ms"),
    ({"hangover_ms": -1}, ">= 0 ms"),
])
def test_bad_vad_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        SpeechFilter(**options)


def test_prompt_interval_files(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("# start end\n2.0 6.0\n\n22, 25  # second prompt\n")
    assert load_prompt_intervals(text) == [(2.0, 6.0), (22.0, 25.0)]
    as_json = tmp_path / "prompts.json"
    as_json.write_text("[[2, 6], [22, 25.5]]")
    assert load_prompt_intervals(as_json) == [(2.0, 6.0), (22.0, 25.5)]
    bad = tmp_path / "bad.txt"
    bad.write_text("2.0 6.0\n7.0\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected 'START END'"):
        load_prompt_intervals(bad)
    backwards = tmp_path / "backwards.txt"
    backwards.write_text("6 2\n")
    with pytest.raises(ValueError, match="need 0 <= start <= end"):
        load_prompt_intervals(backwards)
    with pytest.raises(ValueError, match="missing.txt does not exist"):
        load_prompt_intervals(tmp_path / "missing.txt")
