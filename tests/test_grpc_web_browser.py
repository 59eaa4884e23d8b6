"""The server's gRPC-web port from a page of another origin in real headless Chromium: CORS preflight,
fetch() of PutChunk with a bearer token, the status read from the gRPC-web trailer frame.

The request bytes are built in Python from the compiled .proto; the browser only sends them, as the
record page's generated client would.
"""
import base64
import http.server
import threading

import pytest
from sonora import protocol

from browser_harness import browser, free_port, needs_chromium  # noqa: F401 (the fixture)
from raw_client import RawClient, compile_proto
from server_harness import make_chunks, running_server, tiny_model, write_tokens

pytestmark = needs_chromium

FETCH_SCRIPT = """
const [url, token, body64, done] = arguments;
const body = Uint8Array.from(atob(body64), c => c.charCodeAt(0));
fetch(url, {method: 'POST', body: body, headers: {
    'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', 'authorization': 'Bearer ' + token}})
  .then(async response => {
    const bytes = new Uint8Array(await response.arrayBuffer());
    let at = 0, trailer = '', messages = 0;
    while (at + 5 <= bytes.length) {
      const length = new DataView(bytes.buffer).getUint32(at + 1);
      if (bytes[at] & 0x80) trailer = new TextDecoder().decode(bytes.slice(at + 5, at + 5 + length));
      else messages++;
      at += 5 + length;
    }
    done({http: response.status, headerStatus: response.headers.get('grpc-status'), trailer: trailer,
          messages: messages});
  })
  .catch(error => done({error: String(error)}));
"""


@pytest.fixture
def page_origin():
    """An empty page on its own port: the origin the record page would have."""

    class Blank(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>page</title>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Blank)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_of_an_admitted_origin_puts_chunks_and_another_origin_is_blocked(browser, page_origin,  # noqa: F811
                                                                                  redis_url, tmp_path):
    tokens = write_tokens(tmp_path)
    raw = RawClient(None, compile_proto())
    pcm = make_chunks(1, seed=41)[0]
    request = raw.request("PutChunk", header=raw.header("browser", "p1").header,
                          chunk=raw.message("Chunk")(seq=0, start_seconds=0.0, pcm=pcm))
    body64 = base64.b64encode(protocol.wrap_message(False, False, request.SerializeToString())).decode()
    with running_server(tiny_model(seed=5), redis_url, tokens, grpc_web_port=0,
                        grpc_web_origins=(page_origin,)) as server:
        url = f"http://127.0.0.1:{server.server.grpc_web_port}/moodstream.v1.Screening/PutChunk"
        browser.set_script_timeout(60)
        browser.get(page_origin + "/")
        first = browser.execute_async_script(FETCH_SCRIPT, url, tokens.by_name["agent"], body64)
        again = browser.execute_async_script(FETCH_SCRIPT, url, tokens.by_name["agent"], body64)
        refused = browser.execute_async_script(FETCH_SCRIPT, url, "not-a-token", body64)
        browser.get(page_origin.replace("127.0.0.1", "localhost") + "/")  # another origin
        blocked = browser.execute_async_script(FETCH_SCRIPT, url, tokens.by_name["agent"], body64)
    assert first == {"http": 200, "headerStatus": None, "trailer": "grpc-status: 0\r\n", "messages": 1}, first
    assert again["trailer"] == "grpc-status: 0\r\n" and again["messages"] == 1
    assert refused["headerStatus"] == "16" and refused["messages"] == 0, refused
    assert "error" in blocked and "Failed to fetch" in blocked["error"], blocked
