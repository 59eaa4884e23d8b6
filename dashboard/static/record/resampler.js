// Sample-rate conversion to 16 kHz for browsers whose AudioContext cannot run at 16 kHz on a microphone
// (the context then runs at the device's rate and the capture worklet converts). A windowed-sinc
// low-pass (Blackman window, cut-off at 95 % of the output's Nyquist frequency), evaluated at each
// output sample's position in the input from a finely sampled table. Streams: state carries over.
const ZERO_CROSSINGS = 16;     // of the sinc on each side of an output sample
const TABLE_STEPS = 512;       // table entries per unit of the sinc's argument

export class Resampler {
  constructor(inputRate, outputRate = 16000) {
    this.step = inputRate / outputRate;
    this.cutoff = 0.95 * Math.min(1, outputRate / inputRate);  // cycles per input sample, times 2
    this.halfWidth = ZERO_CROSSINGS / this.cutoff;               // input samples on each side
    const size = ZERO_CROSSINGS * TABLE_STEPS + 2;
    this.table = new Float64Array(size);
    for (let i = 0; i < size; i++) {
      const x = i / TABLE_STEPS;                                 // in sinc zero crossings
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = x >= ZERO_CROSSINGS ? 0 : 0.42 + 0.5 * Math.cos(Math.PI * x / ZERO_CROSSINGS) +
        0.08 * Math.cos(2 * Math.PI * x / ZERO_CROSSINGS);
      this.table[i] = sinc * w * this.cutoff;
    }
    this.history = new Float32Array(0);  // input not yet fully used
    this.offset = 0;                     // input index of history[0]
    this.next = 0;                       // position of the next output sample, in input samples
  }

  kernel(distance) {
    const at = Math.abs(distance) * this.cutoff * TABLE_STEPS;
    const i = Math.floor(at);
    if (i >= this.table.length - 1) return 0;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * (at - i);
  }

  // Float samples in, float samples at the output rate out (as many as the input allows so far).
  process(input) {
    const joined = new Float32Array(this.history.length + input.length);
    joined.set(this.history);
    joined.set(input, this.history.length);
    const end = this.offset + joined.length;
    const out = [];
    while (this.next + this.halfWidth < end) {
      const first = Math.max(this.offset, Math.ceil(this.next - this.halfWidth));
      const last = Math.floor(this.next + this.halfWidth);
      let sum = 0;
      for (let i = first; i <= last; i++) sum += joined[i - this.offset] * this.kernel(this.next - i);
      out.push(sum);
      this.next += this.step;
    }
    const keepFrom = Math.max(this.offset, Math.floor(this.next - this.halfWidth) - 1);
    this.history = joined.slice(keepFrom - this.offset);
    this.offset = keepFrom;
    return Float32Array.from(out);
  }
}
