// Runs on the audio thread of an AudioContext opened at 16 kHz (the browser resamples the microphone):
// the input mixed down to mono, as int16 like the Python agent's sources, posted to the page every 100 ms.
const BLOCK_SAMPLES = 1600;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Int16Array(BLOCK_SAMPLES);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || !channels.length) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      const value = Math.round((sum / channels.length) * 32768);
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
