// Runs the record page's resampler (dashboard/static/record/resampler.js) under Node on float32 samples,
// fed in 128-sample render quanta as the AudioWorklet is. Usage: node record_resample.mjs IN.f32 RATE
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const { Resampler } = await import(pathToFileURL(process.env.RECORD_RESAMPLER_MODULE).href);
const [path, rate] = [process.argv[2], Number(process.argv[3])];
const bytes = readFileSync(path);
const input = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
const resampler = new Resampler(rate, 16000);
const parts = [];
for (let at = 0; at < input.length; at += 128) parts.push(resampler.process(input.subarray(at, at + 128)));
for (const part of parts) process.stdout.write(Buffer.from(part.buffer, part.byteOffset, part.byteLength));
