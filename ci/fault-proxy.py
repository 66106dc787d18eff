"""An HTTP proxy on 127.0.0.1 that passes requests to a real registry and breaks some of
them, for tests of how kiln copes with a misbehaving registry (tests/registry.rs).

    python3 ci/fault-proxy.py UPSTREAM LOG PORT_FILE [FAULT ...]

UPSTREAM is http://HOST:PORT; LOG gets one `METHOD PATH` line per request; the port it listens
on (chosen by the system) is written to PORT_FILE once it accepts connections. Each FAULT is
KIND:METHOD:TEXT:COUNT and applies to the first COUNT requests with that method whose path
contains TEXT:
    NNN  (a status code: 500, 429, ...) answers it without asking the registry;
    cut  a request with a body: the registry gets the first half of the body (as a whole
         request), the client no answer: its connection is closed, as when a link drops
         mid-upload. A request without one: the client gets the answer's headers and half of
         its body, then the connection is closed.
    lost the registry gets the whole request, the client no answer (its connection is
         closed): the request took effect, the client cannot know.
The Host header is passed on, so the registry's Location headers name the proxy. The proxy
exits when the process that started it does.
"""
import http.client
import http.server
import os
import sys
import threading
import time

upstream, log, port_file = sys.argv[1].split("//")[1], sys.argv[2], sys.argv[3]
faults = []
for spec in sys.argv[4:]:
    kind, method, rest = spec.split(":", 2)
    text, count = rest.rsplit(":", 1)
    faults.append({"kind": kind, "method": method, "text": text, "left": int(count)})
lock = threading.Lock()


def fault_for(method, path):
    with lock:
        for fault in faults:
            if fault["left"] > 0 and fault["method"] == method and fault["text"] in path:
                fault["left"] -= 1
                return fault["kind"]
    return None


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def ask(self, body):
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("transfer-encoding", "content-length", "connection")
        }
        conn = http.client.HTTPConnection(upstream)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp, resp.read()

    def answer(self, status, headers, body, send_body=True):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def forward(self):
        with lock, open(log, "a") as f:
            f.write(f"{self.command} {self.path}\n")
        body = self.read_body()
        fault = fault_for(self.command, self.path)
        if fault is not None and fault.isdigit():
            self.answer(int(fault), [("Content-Type", "text/plain")], b"injected failure")
            return
        if fault == "lost":
            self.ask(body)
            self.close_connection = True
            return
        if fault == "cut" and body:
            self.ask(body[: len(body) // 2])
            self.close_connection = True
            return
        resp, data = self.ask(body)
        if self.command == "HEAD":
            # A HEAD answer has no body but keeps the object's length.
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.end_headers()
            return
        if fault == "cut":
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.answer(resp.status, resp.getheaders(), data)

    do_GET = do_PUT = do_POST = do_PATCH = do_HEAD = do_DELETE = forward


def watch_parent(parent):
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client dropping a connection the proxy cut, or resetting one, is the point.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", 0), Proxy)
threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
# Written whole under another name, then renamed: a reader never sees half a port number.
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
