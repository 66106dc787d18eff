"""An HTTP proxy on 127.0.0.1 that logs each request's method and path, for counting what
kiln asks of a store (ci/bench-s3, tests/shared_store.rs). The Host header is passed on, so
SigV4 signatures stay valid.

    python3 ci/counting-proxy.py UPSTREAM LOG PORT_FILE [LATENCY_MS [SPANS]]

UPSTREAM is http://HOST:PORT; LOG gets one `METHOD PATH` line per request, in the order they
arrive, followed by ` names=HEX,HEX` when a small body (a lease record, cache entry, manifest)
mentions `sha256:` digests; the port it listens on (chosen by the system) is written to
PORT_FILE once it accepts connections. LATENCY_MS of delay is added to each request, to stand
for a network. SPANS, if given, gets one `START END METHOD PATH` line per request once it is
answered (seconds on a monotonic clock, from its arrival to its answer), from which
ci/request-chain.py counts the requests that went one after another.
"""
import http.client
import http.server
import os
import re
import sys
import threading
import time

upstream, log, port_file = sys.argv[1].split("//")[1], sys.argv[2], sys.argv[3]
latency = float(sys.argv[4] if len(sys.argv) > 4 else 0) / 1000
spans = sys.argv[5] if len(sys.argv) > 5 else None
lock = threading.Lock()


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        start = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        line = f"{self.command} {self.path}"
        if body and len(body) < 65536:
            named = re.findall(rb"sha256:([0-9a-f]{64})", body)
            if named:
                line += " names=" + ",".join(dict.fromkeys(h.decode() for h in named))
        with lock, open(log, "a") as f:
            f.write(line + "\n")
        time.sleep(latency)
        conn = http.client.HTTPConnection(upstream)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers))
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        # A HEAD answer has no body but keeps the object's length.
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        if spans:
            with lock, open(spans, "a") as f:
                f.write(f"{start:.6f} {time.monotonic():.6f} {self.command} {self.path}\n")

    do_GET = do_PUT = do_POST = do_PATCH = do_HEAD = do_DELETE = forward


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
# Written whole under another name, then renamed: a reader never sees half a port number.
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
