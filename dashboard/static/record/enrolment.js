// The device's enrolment. The clinician's link carries a single-use, short-lived code, never the token:
// a browser keeps every link it opened in its history, where anyone holding the phone later could read
// it. The page trades the code once (the Enrol call, a POST) for the participant's stream token and keeps
// both in IndexedDB, which no history, address bar or other site sees.
import { Code, ConnectError, EnrolRequestSchema, create } from "../vendor/moodstream-grpc-web.js";

// The link's fragment field that holds the code: moodstream/record_link.py ENROL_FIELD writes it.
const ENROL_FIELD = "enrol";
const DB_NAME = "moodstream-record-device";
const STORE = "credentials";
const CURRENT = "current";
// Where pages before enrolment codes kept the credentials; moved into IndexedDB on first load.
const LEGACY_KEY = "moodstream.record.credentials";
// The claim of an enrolment under way, kept across a reload of this tab: a resent Enrol with the same
// claim gets the token again, so an answer lost on the way does not cost the code.
const PENDING = "moodstream.record.enrolment";
const CALL_TIMEOUT_MS = 30000;
const RETRY_MS = [1000, 2000, 5000];
const TRANSIENT = new Set([Code.Unavailable, Code.Unknown, Code.DeadlineExceeded, Code.Internal, Code.Aborted,
  Code.Canceled, Code.ResourceExhausted]);
// What the participant reads when a link cannot enrol this device, by the server's status.
const REFUSALS = {
  [Code.NotFound]: ["unknown", "This link is not known"],
  [Code.FailedPrecondition]: ["used-or-expired", "This link can no longer be used"],
  [Code.PermissionDenied]: ["revoked", "This link was withdrawn"],
  [Code.InvalidArgument]: ["incomplete", "This link is incomplete"],
};

function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function database() {
  const request = indexedDB.open(DB_NAME, 1);
  request.onupgradeneeded = () => request.result.createObjectStore(STORE);
  return done(request);
}

async function store(credentials) {
  const db = await database();
  const transaction = db.transaction(STORE, "readwrite");
  transaction.objectStore(STORE).put(credentials, CURRENT);
  await new Promise((resolve, reject) => {
    transaction.oncomplete = resolve;
    transaction.onerror = () => reject(transaction.error);
  });
  db.close();
}

// This device's participant and token, or null when it was never enrolled.
export async function storedCredentials() {
  const db = await database();
  const kept = await done(db.transaction(STORE).objectStore(STORE).get(CURRENT));
  db.close();
  if (kept) return kept;
  const legacy = localStorage.getItem(LEGACY_KEY);
  if (!legacy) return null;
  const { participant, token } = JSON.parse(legacy);
  await store({ participant, token, tokenName: "" });
  localStorage.removeItem(LEGACY_KEY);
  return { participant, token, tokenName: "" };
}

// What the address bar's fragment asks for: {code} for an enrolment link, {oldLink: true} for a link of
// the kind that carried the token itself, or null. The fragment is removed from the address bar once read.
export function linkInAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has(ENROL_FIELD)) return { code: fragment.get(ENROL_FIELD) };
  if (fragment.has("token")) return { oldLink: true };
  return null;
}

export function clearAddress() {
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

function claimFor(code) {
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
  if (pending && pending.code === code) return pending.claim;
  const claim = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  sessionStorage.setItem(PENDING, JSON.stringify({ code, claim }));
  return claim;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Trades `code` for the credentials and stores them; retries while the server cannot be reached
// (onWait(message) says so). A refusal throws an EnrolmentRefused with what to tell the participant.
export async function enrol(client, code, onWait) {
  const request = create(EnrolRequestSchema, { code, deviceClaim: claimFor(code) });
  for (let failures = 0; ; failures++) {
    try {
      const answer = await client.enrol(request, { timeoutMs: CALL_TIMEOUT_MS });
      const credentials = { participant: answer.participantId, token: answer.token, tokenName: answer.tokenName };
      await store(credentials);
      sessionStorage.removeItem(PENDING);
      return credentials;
    } catch (error) {
      const failure = ConnectError.from(error);
      if (!TRANSIENT.has(failure.code)) {
        sessionStorage.removeItem(PENDING);
        throw EnrolmentRefused.from(failure);
      }
      onWait(`Enrolling this device: the server cannot be reached (${Code[failure.code]}); trying again…`);
      await sleep(RETRY_MS[Math.min(failures, RETRY_MS.length - 1)]);
    }
  }
}

export class EnrolmentRefused extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }

  static from(failure) {
    const [kind, title] = REFUSALS[failure.code] || ["refused", "This link cannot enrol this device"];
    return new EnrolmentRefused(kind, `${title}: ${failure.rawMessage}.`);
  }
}

export const OLD_LINK = new EnrolmentRefused("old-link", "This link is of an older kind, which carried the " +
  "access token itself: ask your clinician for a new link (and to revoke the old one).");
