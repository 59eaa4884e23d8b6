// Keeping the subject's speech and cutting it into chunks, in the browser: the Python agent's
// SpeechFilter (moodstream.agent.vad) and Chunker (moodstream.agent.chunker) line for line, with
// WebRTC's VAD compiled to WebAssembly (libfvad) in place of py-webrtcvad. The settings come from
// the dashboard's /record/settings.json: the served model's (GetModelInfo), else the agent's defaults.
// Plain ES module: the page imports it, and the tests run it under Node against the Python agent.

export const SAMPLE_RATE = 16000;

// WebRTC's VAD on 16 kHz int16 frames. `factory` is the default export of @echogarden/fvad-wasm.
export async function loadVad(factory, aggressiveness, frameSamples, options = {}) {
  const wasm = await factory(options);
  const handle = wasm._fvad_new();
  if (!handle) throw new Error("the VAD could not be created");
  if (wasm._fvad_set_mode(handle, aggressiveness) !== 0) throw new Error(`bad VAD aggressiveness ${aggressiveness}`);
  if (wasm._fvad_set_sample_rate(handle, SAMPLE_RATE) !== 0) throw new Error("the VAD refused 16 kHz");
  const buffer = wasm._malloc(frameSamples * 2);
  return (frame) => {
    wasm.HEAP16.set(frame, buffer >> 1);
    const vote = wasm._fvad_process(handle, buffer, frame.length);
    if (vote < 0) throw new Error(`the VAD refused a frame of ${frame.length} samples`);
    return vote === 1;
  };
}

// A stretch of the session clock, kept (with its samples) or dropped (with the reason).
function piece(start, samples, length, kept, votedSpeech = false, reason = "") {
  return { start, samples, length, kept, votedSpeech, reason };
}

export class SpeechFilter {
  constructor(settings, isSpeech, firstSample = 0) {
    const frameMs = settings.frame_ms;
    if (![10, 20, 30].includes(frameMs)) throw new Error(`VAD frame must be 10, 20 or 30 ms, got ${frameMs}`);
    this.isSpeech = isSpeech;
    this.frameSamples = (SAMPLE_RATE * frameMs) / 1000;
    this.onsetFrames = Math.max(1, Math.ceil(settings.onset_ms / frameMs));
    this.hangoverFrames = Math.floor(settings.hangover_ms / frameMs);
    this.warmupFramesLeft = Math.ceil(settings.warmup_ms / frameMs);
    this.carry = new Int16Array(0);
    this.nextSample = firstSample;
    this.speaking = false;
    this.quietFrames = 0;
    this.pending = [];
    this.keptSamples = 0;
    this.speechFrames = 0;
    this.droppedSamples = { silence: 0, onset: 0, tail: 0, warmup: 0 };
  }

  process(block) {
    let samples = block;
    if (this.carry.length) {
      samples = new Int16Array(this.carry.length + block.length);
      samples.set(this.carry);
      samples.set(block, this.carry.length);
    }
    const size = this.frameSamples;
    const whole = samples.length - (samples.length % size);
    this.carry = samples.slice(whole);
    const out = [];
    for (let offset = 0; offset < whole; offset += size) this.frame(samples.slice(offset, offset + size), out);
    return out;
  }

  flush() {
    const out = [];
    this.dropPending(out, "onset");
    if (this.carry.length) {
      out.push(this.dropped(this.nextSample, this.carry.length, "tail"));
      this.nextSample += this.carry.length;
      this.carry = new Int16Array(0);
    }
    this.speaking = false;
    return out;
  }

  dropped(start, length, reason) {
    this.droppedSamples[reason] += length;
    return piece(start, null, length, false, false, reason);
  }

  keep(start, frame, voted, out) {
    this.keptSamples += frame.length;
    this.speechFrames += voted ? 1 : 0;
    out.push(piece(start, frame, frame.length, true, voted));
  }

  dropPending(out, reason) {
    for (const [start, frame] of this.pending) out.push(this.dropped(start, frame.length, reason));
    this.pending = [];
  }

  frame(frame, out) {
    const start = this.nextSample;
    this.nextSample += frame.length;
    const voted = this.isSpeech(frame);
    if (this.warmupFramesLeft) {
      this.warmupFramesLeft -= 1;
      out.push(this.dropped(start, frame.length, "warmup"));
      return;
    }
    if (this.speaking) {
      if (voted) {
        this.quietFrames = 0;
        this.keep(start, frame, true, out);
      } else if (this.quietFrames < this.hangoverFrames) {
        this.quietFrames += 1;
        this.keep(start, frame, false, out);
      } else {
        this.speaking = false;
        out.push(this.dropped(start, frame.length, "silence"));
      }
      return;
    }
    if (!voted) {
      this.dropPending(out, "onset");
      out.push(this.dropped(start, frame.length, "silence"));
      return;
    }
    this.pending.push([start, frame]);
    if (this.pending.length >= this.onsetFrames) {
      for (const [pendingStart, pendingFrame] of this.pending) this.keep(pendingStart, pendingFrame, true, out);
      this.pending = [];
      this.speaking = true;
      this.quietFrames = 0;
    }
  }
}

// Kept speech -> chunks of exactly chunk_seconds of speech; a last partial chunk is sent only when
// it holds at least min_last_chunk_seconds, as the Python agent does.
export class Chunker {
  constructor(settings, firstSeq = 0) {
    this.chunkSamples = Math.round(settings.chunk_seconds * SAMPLE_RATE);
    this.minLastSamples = settings.min_last_chunk_seconds * SAMPLE_RATE;
    this.nextSeq = firstSeq;
    this.filling = Chunker.empty();
  }

  static empty() {
    return { parts: [], samples: 0, startSample: null, endSample: 0, vadFrames: 0, droppedSamples: 0 };
  }

  get bufferedSeconds() {
    return this.filling.samples / SAMPLE_RATE;
  }

  add(kept) {
    let filling = this.filling;
    if (!kept.kept) {
      filling.droppedSamples += kept.length;
      return [];
    }
    const chunks = [];
    let samples = kept.samples;
    let start = kept.start;
    let votes = kept.votedSpeech ? 1 : 0;
    while (samples.length) {
      if (filling.startSample === null) filling.startSample = start;
      const room = this.chunkSamples - filling.samples;
      const taken = samples.subarray(0, room);
      filling.parts.push(taken);
      filling.samples += taken.length;
      filling.endSample = start + taken.length;
      filling.vadFrames += votes;
      votes = 0;
      samples = samples.subarray(room);
      start += taken.length;
      if (filling.samples === this.chunkSamples) {
        chunks.push(this.emit());
        filling = this.filling;
      }
    }
    return chunks;
  }

  // End of input: the partial chunk is emitted if long enough, else reported as dropped.
  finish() {
    const filling = this.filling;
    if (!filling.samples) return { chunks: [], droppedTail: null };
    if (filling.samples >= this.minLastSamples) return { chunks: [this.emit()], droppedTail: null };
    this.filling = Chunker.empty();
    return { chunks: [], droppedTail: { seq: this.nextSeq, speechSeconds: filling.samples / SAMPLE_RATE } };
  }

  emit() {
    const filling = this.filling;
    const pcm = new Int16Array(filling.samples);
    let at = 0;
    for (const part of filling.parts) {
      pcm.set(part, at);
      at += part.length;
    }
    const chunk = {
      seq: this.nextSeq,
      startSeconds: filling.startSample / SAMPLE_RATE,
      endSeconds: filling.endSample / SAMPLE_RATE,
      pcm,
      speechSeconds: filling.samples / SAMPLE_RATE,
      droppedSeconds: filling.droppedSamples / SAMPLE_RATE,
      vadFrames: filling.vadFrames,
    };
    this.nextSeq += 1;
    this.filling = Chunker.empty();
    return chunk;
  }
}
