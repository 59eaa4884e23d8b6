// Runs on the audio thread of the capture's AudioContext: the input mixed down to mono, at 16 kHz, as
// int16 like the Python agent's sources, posted to the page every 100 ms. The context runs at 16 kHz
// where the browser can resample the microphone itself; elsewhere this converts (resampler.js).
import { Resampler } from "./resampler.js";

const OUTPUT_RATE = 16000;
const BLOCK_SAMPLES = 1600;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Int16Array(BLOCK_SAMPLES);
    this.filled = 0;
    this.resampler = sampleRate === OUTPUT_RATE ? null : new Resampler(sampleRate, OUTPUT_RATE);
    this.mono = new Float32Array(128);
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || !channels.length) return true;
    const frames = channels[0].length;
    if (this.mono.length !== frames) this.mono = new Float32Array(frames);
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.mono[i] = sum / channels.length;
    }
    const samples = this.resampler ? this.resampler.process(this.mono) : this.mono;
    for (let i = 0; i < samples.length; i++) {
      const value = Math.round(samples[i] * 32768);
      this.block[this.filled++] = value > 32767 ? 32767 : value < -32768 ? -32768 : value;
      if (this.filled === BLOCK_SAMPLES) {
        this.port.postMessage(this.block, [this.block.buffer]);
        this.block = new Int16Array(BLOCK_SAMPLES);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("moodstream-capture", CaptureProcessor);
