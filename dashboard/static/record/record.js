// The record page: the participant's own device captures the microphone, keeps speech with the agent's
// VAD and chunker (speech.js), stores every chunk in the outbox (outbox.js) and sends it with gRPC-web
// PutChunk, deleting it only on its ack. It never shows a score: the participant is not the clinician.
import fvad from "../vendor/fvad.js";
import {
  AudioEncoding, Code, ConnectError, PutChunkRequestSchema, Screening, create, createClient, createGrpcWebTransport,
} from "../vendor/moodstream-grpc-web.js";
import { OLD_LINK, clearAddress, enrol, linkInAddress, storedCredentials } from "./enrolment.js";
import { Outbox } from "./outbox.js";
import { Chunker, SAMPLE_RATE, SpeechFilter, loadVad } from "./speech.js";

const CALL_TIMEOUT_MS = 30000;
const RETRY_MS = [1000, 2000, 5000];
// Worth retrying: the network or the server is away. Anything else needs a person (a new link, ...).
const TRANSIENT = new Set([Code.Unavailable, Code.Unknown, Code.DeadlineExceeded, Code.Internal, Code.Aborted,
  Code.Canceled, Code.ResourceExhausted]);

const $ = (id) => document.getElementById(id);
const root = document.body.dataset.root || "";
const view = { sent: 0, network: "idle", problem: "", keptSamples: 0, sessionId: "" };
let settings, outbox, client, credentials, session = null, capture = null, pumping = false, wake = null;

function newSessionId() {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "");
  const random = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0"));
  return `web-${stamp}-${random.join("")}`;
}

function deviceId() {
  let id = localStorage.getItem("moodstream.record.device");
  if (!id) {
    id = `browser-${Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, "0")).join("")}`;
    localStorage.setItem("moodstream.record.device", id);
  }
  return id;
}

function clock(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

async function render() {
  const waiting = outbox ? await outbox.count() : 0;
  const recording = capture !== null;
  const kept = (session?.keptSeconds || 0) + (capture ? capture.chunker.bufferedSeconds : 0);
  document.body.dataset.state = recording ? "recording" : session ? "paused" : "idle";
  $("indicator").textContent = recording ? "Recording" : session ? "Paused" : "Not recording";
  $("kept").textContent = clock(kept);
  $("kept").dataset.seconds = kept.toFixed(3);
  if (capture) view.keptSamples = capture.filter.keptSamples;
  $("kept").dataset.keptSamples = String(view.keptSamples);  // this capture's, as the Python agent counts them
  // How much audio this capture has heard, kept or not: what a test waits on instead of the wall clock.
  $("kept").dataset.heardSamples = capture ? String(capture.filter.nextSample - capture.firstSample) : "0";
  $("sent").textContent = String(view.sent);
  $("waiting").textContent = String(waiting);
  $("waiting").dataset.count = String(waiting);
  $("network").textContent = { idle: "up to date", sending: "sending…", offline: "offline: will retry",
    stopped: "not sending" }[view.network];
  $("network").dataset.state = view.network;
  $("problem").hidden = !view.problem;
  $("problem").textContent = view.problem;
  if (session) view.sessionId = session.sessionId;
  $("session").textContent = view.sessionId || "";
  $("start").hidden = recording;
  $("start").textContent = session ? "Continue recording" : "Start recording";
  $("stop").hidden = !session;
}

function request(item) {
  const header = { sessionId: item.sessionId, participantId: item.participantId, deviceId: deviceId(),
    sampleRate: SAMPLE_RATE, encoding: AudioEncoding.PCM_S16LE, resumeFromSeq: BigInt(item.seq) };
  const message = item.kind === "end" ? { case: "end", value: { lastSeq: BigInt(item.seq) } }
    : { case: "chunk", value: { seq: BigInt(item.seq), startSeconds: item.startSeconds, pcm: new Uint8Array(item.pcm),
        speech: { speechSeconds: item.speechSeconds, droppedSeconds: item.droppedSeconds, vadFrames: item.vadFrames } } };
  return create(PutChunkRequestSchema, { header, message });
}

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => { clearTimeout(timer); resolve(); };
  });
}

// Sends the outbox in order, one call per item; an item leaves the outbox only on its ack.
async function pump() {
  if (pumping || !client) return;
  pumping = true;
  let failures = 0;
  try {
    for (let item = await outbox.first(); item; item = await outbox.first()) {
      view.network = "sending";
      await render();
      try {
        const answer = await client.putChunk(request(item), {
          headers: { authorization: `Bearer ${credentials.token}` }, timeoutMs: CALL_TIMEOUT_MS });
        const acked = item.kind === "end" ? answer.ended : answer.ack && Number(answer.ack.seq) === item.seq;
        if (!acked) throw new ConnectError(`the server did not acknowledge ${item.kind} ${item.seq}`, Code.Internal);
        await outbox.remove(item.key);
        if (item.kind === "chunk") view.sent += 1;
        failures = 0;
        view.problem = "";
      } catch (error) {
        const failure = ConnectError.from(error);
        if (!TRANSIENT.has(failure.code)) {
          view.network = "stopped";
          view.problem = `The server refused this recording (${Code[failure.code]}): ${failure.rawMessage}. ` +
            "Nothing is lost; ask your clinician for a new link.";
          return;
        }
        view.network = "offline";
        await render();
        await sleep(RETRY_MS[Math.min(failures++, RETRY_MS.length - 1)]);
      }
    }
    view.network = "idle";
  } finally {
    pumping = false;
    await render();
  }
}

async function audioContext(options) {
  const context = new AudioContext(options);
  await context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
  return context;
}

async function startCapture() {
  if (!session) {
    session = { sessionId: newSessionId(), participantId: credentials.participant, nextSeq: 0, keptSeconds: 0,
      originMs: Date.now(), ended: false };
    await outbox.startSession(session);
  }
  // Everything else is ready before the microphone opens, so no speech is missed while loading.
  const vad = await loadVad(fvad, settings.vad_aggressiveness, (SAMPLE_RATE * settings.frame_ms) / 1000);
  let context = await audioContext({ sampleRate: SAMPLE_RATE });
  const stream = await navigator.mediaDevices.getUserMedia({ audio: {
    echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
  let source;
  try {
    source = context.createMediaStreamSource(stream);
  } catch (error) {
    // Some browsers cannot resample a microphone into a 16 kHz context: run at the device's rate and
    // let the worklet convert.
    await context.close();
    context = await audioContext({});
    source = context.createMediaStreamSource(stream);
  }
  // The session clock goes on across a reload: this capture starts where wall time says it is.
  const firstSample = Math.round(((Date.now() - session.originMs) / 1000) * SAMPLE_RATE);
  const current = { stream, context, firstSample, filter: new SpeechFilter(settings, vad, firstSample),
    chunker: new Chunker(settings, session.nextSeq), queue: Promise.resolve() };
  const node = new AudioWorkletNode(context, "moodstream-capture", { numberOfInputs: 1, numberOfOutputs: 1,
    channelCount: 1, channelCountMode: "explicit" });
  node.port.onmessage = ({ data }) => {
    const chunks = [];
    for (const kept of current.filter.process(data)) chunks.push(...current.chunker.add(kept));
    current.queue = current.queue.then(() => store(chunks));
  };
  source.connect(node);
  node.connect(context.destination);  // the worklet writes silence; the graph needs a sink to run
  current.node = node;
  capture = current;
  await render();
}

async function store(chunks) {
  for (const chunk of chunks) await outbox.addChunk(session, chunk);
  if (chunks.length) pump();
  await render();
}

async function stopCapture() {
  if (capture) {
    const current = capture;
    capture = null;
    current.node.port.onmessage = null;
    current.stream.getTracks().forEach((track) => track.stop());
    await current.context.close();
    const chunks = [];
    for (const kept of current.filter.flush()) chunks.push(...current.chunker.add(kept));
    const { chunks: last, droppedTail } = current.chunker.finish();
    await current.queue;
    await store([...chunks, ...last]);
    view.keptSamples = current.filter.keptSamples;
    if (droppedTail) $("tail").textContent = `The last ${droppedTail.speechSeconds.toFixed(1)} s of speech were too short to score.`;
  }
  if (session) {
    await outbox.endSession(session);
    session = null;
  }
  pump();
  await render();
}

function failed(error) {
  view.problem = String(error.message || error);
  render();
}

function showOnly(message) {
  $("no-link").textContent = message;
  $("no-link").hidden = false;
  $("controls").hidden = true;
}

// A link's enrolment code becomes this device's credentials (stored), once. A link that cannot enrol
// says why; a device enrolled before keeps recording with what it holds.
async function enrolFromLink(link) {
  document.body.dataset.enrolment = "enrolling";
  try {
    if (link.oldLink) throw OLD_LINK;
    credentials = await enrol(client, link.code, showOnly);
    document.body.dataset.enrolment = "enrolled";
  } catch (error) {
    if (!error.kind) throw error;
    document.body.dataset.enrolment = error.kind;
    if (!credentials) return showOnly(`${error.message} This device is not enrolled, so it cannot record.`);
    view.problem = `${error.message} This device stays enrolled for ${credentials.participant}.`;
  } finally {
    clearAddress();
  }
  $("no-link").hidden = true;
  $("controls").hidden = false;
}

async function main() {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register(`${root}/record-service-worker.js`, { scope: `${root}/record` }).catch(failed);
  }
  credentials = await storedCredentials();
  const link = linkInAddress();
  const info = await (await fetch(`${root}/record/settings.json`)).json();
  settings = info.capture;
  if (!info.endpoint) {
    return showOnly("This dashboard is not set up for recording: start it with --record-endpoint.");
  }
  client = createClient(Screening, createGrpcWebTransport({ baseUrl: info.endpoint }));
  if (link) await enrolFromLink(link);
  if (!credentials) {
    if (!link) showOnly($("no-link").textContent);
    return;
  }
  $("participant").textContent = credentials.participant;
  outbox = await Outbox.open();
  session = await outbox.openSession();
  $("start").addEventListener("click", () => startCapture().catch(failed));
  $("stop").addEventListener("click", () => stopCapture().catch(failed));
  addEventListener("online", () => wake && wake());
  setInterval(render, 500);
  await render();
  document.body.dataset.ready = "1";
  pump();
}

main().catch(failed);
