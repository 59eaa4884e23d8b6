// Runs the record page's speech module under Node on raw s16le 16 kHz audio and prints its chunks as
// JSON, so that tests can compare them with the Python agent's on the same samples.
// Usage: node record_speech.mjs AUDIO.raw SETTINGS.json FVAD_DIR
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [audioPath, settingsPath, fvadDir] = process.argv.slice(2);
const speech = await import(pathToFileURL(process.env.RECORD_SPEECH_MODULE).href);
const { default: fvad } = await import(pathToFileURL(`${fvadDir}/fvad.js`).href);
const settings = JSON.parse(readFileSync(settingsPath, "utf8"));
const bytes = readFileSync(audioPath);
const audio = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
const filter = new speech.SpeechFilter(settings, await speech.loadVad(fvad, settings.vad_aggressiveness,
  (speech.SAMPLE_RATE * settings.frame_ms) / 1000));
const chunker = new speech.Chunker(settings);
const chunks = [];
const BLOCK = 128; // what an AudioWorklet hands over per render quantum
for (let at = 0; at < audio.length; at += BLOCK) {
  for (const kept of filter.process(audio.slice(at, at + BLOCK))) chunks.push(...chunker.add(kept));
}
for (const kept of filter.flush()) chunks.push(...chunker.add(kept));
const { chunks: last, droppedTail } = chunker.finish();
chunks.push(...last);
console.log(JSON.stringify({
  keptSeconds: filter.keptSamples / speech.SAMPLE_RATE,
  chunks: chunks.map((c) => ({ seq: c.seq, start: c.startSeconds, speech: c.speechSeconds, votes: c.vadFrames,
    pcm: Buffer.from(c.pcm.buffer).toString("base64") })),
  droppedTail,
}));
