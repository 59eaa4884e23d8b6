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
const PROBE_TIMEOUT_MS = 5000;
const RETRY_MS = [1000, 2000, 5000];
// Worth retrying: the network or the server is away. Anything else needs a person (a new link, ...).
const TRANSIENT = new Set([Code.Unavailable, Code.Unknown, Code.DeadlineExceeded, Code.Internal, Code.Aborted,
  Code.Canceled, Code.ResourceExhausted]);

const $ = (id) => document.getElementById(id);
const root = document.body.dataset.root || "";
const view = { network: "idle", problem: "", keptSamples: 0, sessionId: "" };
const NETWORK = { idle: "up to date", sending: "sending…", offline: "offline: will retry",
  unreachable: "scoring server unreachable: will retry", stopped: "not sending" };
// `session` is the one being recorded (open, across reloads); `finished` the one last ended, which the
// page goes on showing (what the server has of it) until a new one starts.
let settings, sessionMetadataKey, outbox, client, credentials, session = null, finished = null, capture = null, pumping = false,
  wake = null;

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

// "Stop and finish" ends on this sentence: everything received, or what still waits and that it will go.
function finishedSentence({ parts, received, waiting, endWaiting }) {
  if (parts === 0) return "Session finished — no part was long enough to send.";
  const all = parts === 1 ? "its 1 part" : `all ${parts} parts`;
  if (waiting === 0) {
    return `Session finished — ${all} received by the server${endWaiting ? "; telling it the session ended…" : "."}`;
  }
  const soFar = `Session finished — ${received} of ${parts} parts received by the server.`;
  const these = waiting === 1 ? "1 part is" : `${waiting} parts are`;
  if (view.network === "stopped") return `${soFar} ${these} kept on this device (see the message above).`;
  return `${soFar} ${these} still waiting on this device and will be sent when the server can be reached, ` +
    "while this page is open or the next time you open it.";
}

async function render() {
  const waiting = outbox ? await outbox.waitingParts() : 0;
  const shown = session || finished;
  // From the outbox, not from this page's calls: the same after a reload, and equal to the server's.
  const progress = shown && outbox ? await outbox.progress(shown) : { parts: 0, received: 0, waiting: 0 };
  const recording = capture !== null;
  const kept = (shown?.keptSeconds || 0) + (capture ? capture.chunker.bufferedSeconds : 0);
  document.body.dataset.state = recording ? "recording" : session ? "paused" : finished ? "finished" : "idle";
  $("indicator").textContent = recording ? "Recording" : session ? "Paused" : finished ? "Finished" : "Not recording";
  $("finished").hidden = !finished;
  if (finished) {
    $("finished").textContent = finishedSentence(progress);
    Object.assign($("finished").dataset, { parts: progress.parts, received: progress.received,
      waiting: progress.waiting, complete: progress.waiting === 0 && !progress.endWaiting ? "1" : "0" });
  }
  $("kept").textContent = clock(kept);
  $("kept").dataset.seconds = kept.toFixed(3);
  if (capture) view.keptSamples = capture.filter.keptSamples;
  $("kept").dataset.keptSamples = String(view.keptSamples);  // this capture's, as the Python agent counts them
  // How much audio this capture has heard, kept or not: what a test waits on instead of the wall clock.
  $("kept").dataset.heardSamples = capture ? String(capture.filter.nextSample - capture.firstSample) : "0";
  $("sent").textContent = String(progress.received);
  $("waiting").textContent = String(waiting);
  $("waiting").dataset.count = String(waiting);
  // The device knows it has no network before any call fails.
  const network = !navigator.onLine && view.network !== "stopped" ? "offline" : view.network;
  $("network").textContent = NETWORK[network];
  $("network").dataset.state = network;
  $("problem").hidden = !view.problem;
  $("problem").textContent = view.problem;
  if (shown) view.sessionId = shown.sessionId;
  $("session").textContent = view.sessionId || "";
  $("start").hidden = recording;
  $("start").textContent = session ? "Continue recording" : finished ? "Start a new recording" : "Start recording";
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

// A send failed for a reason worth retrying: is it this device's network, or the scoring server? The
// page's own host answering (any HTTP status) means the network is up. /healthz is not in the service
// worker's cache, so only the network can answer it. (With the page's host down too, this says offline.)
async function networkUp() {
  if (!navigator.onLine) return false;
  try {
    await fetch(`${root}/healthz`, { method: "HEAD", cache: "no-store", signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    return true;
  } catch {
    return false;
  }
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
          // The session id as metadata too, so a load balancer can keep a session on one replica (docs/clinic-api.md).
          headers: { authorization: `Bearer ${credentials.token}`, [sessionMetadataKey]: item.sessionId },
          timeoutMs: CALL_TIMEOUT_MS });
        const acked = item.kind === "end" ? answer.ended : answer.ack && Number(answer.ack.seq) === item.seq;
        if (!acked) throw new ConnectError(`the server did not acknowledge ${item.kind} ${item.seq}`, Code.Internal);
        await outbox.remove(item.key);
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
        view.network = (await networkUp()) ? "unreachable" : "offline";
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
    finished = null;
    $("tail").textContent = "";
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
    if (droppedTail) $("tail").textContent = `The last ${droppedTail.speechSeconds.toFixed(1)} s of speech were too short to send.`;
  }
  if (session) {
    await outbox.endSession(session);
    finished = session;
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
  sessionMetadataKey = info.session_metadata_key;
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
  if (!session) finished = await outbox.lastSession(credentials.participant);
  $("start").addEventListener("click", () => startCapture().catch(failed));
  $("stop").addEventListener("click", () => stopCapture().catch(failed));
  addEventListener("online", () => { if (wake) wake(); render(); });
  addEventListener("offline", () => render());
  setInterval(render, 500);
  await render();
  document.body.dataset.ready = "1";
  pump();
}

main().catch(failed);
