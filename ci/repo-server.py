"""A web server on 127.0.0.1 serving a folder (a Debian repository) over HTTP or HTTPS, that
can misbehave, for tests of how kiln fetches from repositories (tests/debian.rs).

    python3 ci/repo-server.py DIR LOG PORT_FILE [--tls CERT KEY] [--redirect URL] [FAULT ...]

LOG gets one `GET PATH` line per request (and one `CONNECTION` line per connection accepted,
before any TLS handshake); the port it listens on (chosen by the system) is
written to PORT_FILE once it accepts connections. With --tls it speaks HTTPS with the PEM
certificate chain CERT and key KEY. Each FAULT is KIND:TEXT:COUNT and applies to the first
COUNT requests whose path contains TEXT:
    NNN    (a status code: 503, 429, ...) answers it with that status and no file;
    redirect  answers it 301 to the --redirect URL followed by the request's path;
    drop   closes the connection without an answer, as when a link drops;
    cut    sends the headers and half of the file, then closes the connection;
    stall  sends the headers and half of the file, then nothing more, holding the
           connection open until the client gives up.
The server exits when the process that started it does.
"""
import http.server
import os
import ssl
import sys
import threading
import time

args = sys.argv[1:]
root, log, port_file = args[:3]
args = args[3:]
tls = None
if args[:1] == ["--tls"]:
    tls, args = (args[1], args[2]), args[3:]
redirect = None
if args[:1] == ["--redirect"]:
    redirect, args = args[1].rstrip("/"), args[2:]
faults = []
for spec in args:
    kind, rest = spec.split(":", 1)
    text, count = rest.rsplit(":", 1)
    faults.append({"kind": kind, "text": text, "left": int(count)})
lock = threading.Lock()
# Set when the process exits, so a stalled answer stops holding its thread.
done = threading.Event()


def fault_for(path):
    with lock:
        for fault in faults:
            if fault["left"] > 0 and fault["text"] in path:
                fault["left"] -= 1
                return fault["kind"]
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock, open(log, "a") as f:
            f.write(f"GET {self.path}\n")
        fault = fault_for(self.path)
        if fault == "drop":
            self.close_connection = True
            return
        if fault == "redirect":
            self.send_response(301)
            self.send_header("Location", redirect + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault is not None and fault.isdigit():
            body = b"injected failure"
            self.send_response(int(fault))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        relative = http.server.urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
        # Normalised, not resolved: the tests' pool holds symlinks to the fixture's files.
        path = os.path.normpath(os.path.join(root, relative))
        if not path.startswith(os.path.normpath(root) + os.sep) or not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "cut":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "stall":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            done.wait()
            self.close_connection = True
            return
        self.wfile.write(data)


def watch_parent(parent):
    while os.getppid() == parent:
        time.sleep(0.5)
    done.set()
    os._exit(0)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        # Called once per connection waiting to be accepted; with TLS, accepting it shakes
        # hands, which a client that refuses the certificate ends there.
        with lock, open(log, "a") as f:
            f.write("CONNECTION\n")
        return super().get_request()

    def handle_error(self, request, client_address):
        # A client that gives up on a stalled answer, or refuses the certificate, is the point.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)


server = Server(("127.0.0.1", 0), Handler)
if tls is not None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
# Written whole under another name, then renamed: a reader never sees half a port number.
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
