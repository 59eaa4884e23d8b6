// The page's outbox in IndexedDB: a chunk (or a session's End) is stored before it is sent and deleted
// only when the server acknowledges it, so a reload, a closed tab or a dropped network loses nothing
// and the same seq is sent again. Each session's next seq is stored in the same transaction as its
// chunk, so a seq is never reused for different audio.
const DB_NAME = "moodstream-record";
const OUTBOX = "outbox";
const SESSIONS = "sessions";

function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function committed(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onerror = () => reject(transaction.error);
    transaction.onabort = () => reject(transaction.error || new Error("outbox transaction aborted"));
  });
}

// Items sort by session (ids start with their UTC start time), then seq, then a chunk before an End.
export function itemKey(sessionId, seq, kind) {
  return `${sessionId}:${String(seq).padStart(12, "0")}:${kind === "end" ? 1 : 0}`;
}

export class Outbox {
  static async open() {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      request.result.createObjectStore(OUTBOX, { keyPath: "key" });
      request.result.createObjectStore(SESSIONS, { keyPath: "sessionId" });
    };
    return new Outbox(await done(request));
  }

  constructor(db) {
    this.db = db;
  }

  async startSession(session) {
    const transaction = this.db.transaction(SESSIONS, "readwrite");
    transaction.objectStore(SESSIONS).put(session);
    await committed(transaction);
  }

  async openSession() {
    const sessions = await done(this.db.transaction(SESSIONS).objectStore(SESSIONS).getAll());
    return sessions.find((session) => !session.ended) || null;
  }

  // The participant's latest session on this device, finished or not: what the page shows after a reload.
  async lastSession(participantId) {
    const sessions = await done(this.db.transaction(SESSIONS).objectStore(SESSIONS).getAll());
    return sessions.filter((session) => session.participantId === participantId)
      .reduce((last, session) => (!last || session.originMs > last.originMs ? session : last), null);
  }

  // How far the server has a session: its parts (chunks cut) and how many of them, and its End, still
  // wait here. An item leaves the outbox only on the server's ack, so parts - waiting is what the server
  // holds, across reloads and resends, without a second counter to drift from it.
  async progress(session) {
    const range = IDBKeyRange.bound(`${session.sessionId}:`, `${session.sessionId}:\uffff`);
    const keys = await done(this.db.transaction(OUTBOX).objectStore(OUTBOX).getAllKeys(range));
    const endWaiting = keys.some((key) => key.endsWith(":1"));
    const waiting = keys.length - (endWaiting ? 1 : 0);
    return { parts: session.nextSeq, waiting, received: session.nextSeq - waiting, endWaiting };
  }

  async addChunk(session, chunk) {
    const transaction = this.db.transaction([OUTBOX, SESSIONS], "readwrite");
    transaction.objectStore(OUTBOX).put({
      key: itemKey(session.sessionId, chunk.seq, "chunk"), kind: "chunk", sessionId: session.sessionId,
      participantId: session.participantId, seq: chunk.seq, startSeconds: chunk.startSeconds,
      pcm: chunk.pcm.buffer, speechSeconds: chunk.speechSeconds, droppedSeconds: chunk.droppedSeconds,
      vadFrames: chunk.vadFrames,
    });
    session.nextSeq = chunk.seq + 1;
    session.keptSeconds = (session.keptSeconds || 0) + chunk.speechSeconds;
    transaction.objectStore(SESSIONS).put(session);
    await committed(transaction);
  }

  // The session is over on this device; its End (if it sent any chunk) waits in the outbox.
  async endSession(session) {
    const transaction = this.db.transaction([OUTBOX, SESSIONS], "readwrite");
    if (session.nextSeq > 0) {
      transaction.objectStore(OUTBOX).put({
        key: itemKey(session.sessionId, session.nextSeq - 1, "end"), kind: "end", sessionId: session.sessionId,
        participantId: session.participantId, seq: session.nextSeq - 1,
      });
    }
    session.ended = true;
    transaction.objectStore(SESSIONS).put(session);
    await committed(transaction);
  }

  async first() {
    const cursor = await done(this.db.transaction(OUTBOX).objectStore(OUTBOX).openCursor());
    return cursor ? cursor.value : null;
  }

  // Parts (chunks) still to send, of every session; a session's End is not a part.
  async waitingParts() {
    const keys = await done(this.db.transaction(OUTBOX).objectStore(OUTBOX).getAllKeys());
    return keys.filter((key) => key.endsWith(":0")).length;
  }

  async remove(key) {
    const transaction = this.db.transaction(OUTBOX, "readwrite");
    transaction.objectStore(OUTBOX).delete(key);
    await committed(transaction);
  }
}
