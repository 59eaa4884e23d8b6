// The record page's service worker: the page, its scripts, styles, the VAD's WebAssembly and its settings
// are fetched from the network when it answers and from this cache when it does not, so the page opens
// (and records into its outbox) without a network. Speech is never cached here: it lives in the outbox.
const CACHE = "moodstream-record-v1";
const root = new URL(self.registration.scope).pathname.replace(/\/record$/, "");
const SHELL = [`${root}/record`, `${root}/record/settings.json`, `${root}/record.webmanifest`];
const ASSETS = `${root}/static/`;
const PRECACHED = ["record/record.js", "record/speech.js", "record/outbox.js", "record/enrolment.js",
  "record/capture-worklet.js", "record/resampler.js",
  "record/record.css", "vendor/fvad.js", "vendor/fvad.wasm", "vendor/moodstream-grpc-web.js", "favicon.svg"]
  .map((name) => ASSETS + name);

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll([...SHELL, ...PRECACHED])).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((name) => name !== CACHE).map((name) => caches.delete(name))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const mine = url.origin === self.location.origin && event.request.method === "GET" &&
    (SHELL.includes(url.pathname) || url.pathname.startsWith(ASSETS));
  if (!mine) return;
  event.respondWith(fetch(event.request).then((response) => {
    if (response.ok) {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put(event.request, copy));
    }
    return response;
  }).catch(() => caches.match(event.request, { ignoreSearch: url.pathname.startsWith(ASSETS) })
    .then((cached) => cached || Response.error())));
});
