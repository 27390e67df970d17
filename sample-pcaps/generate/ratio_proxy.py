#!/usr/bin/python3
"""A ratio-cheating HTTP proxy in the manner of BittOratio (2011-2015): the
client is configured to send its tracker requests through it, on its own
host; it multiplies the `uploaded` parameter of every announce by an
integer factor and relays the tracker's answer unchanged.  Everything else
in the request (peer id, key, port, downloaded, left, event, User-Agent) is
forwarded as sent, which is what makes this kind of cheat invisible to a
tracker that only checks the announce series itself.

    ip netns exec NS /usr/bin/python3 ratio_proxy.py --listen 10.99.0.12:8080 \
        --source 10.99.0.12 --factor 4 --log announces.jsonl

Listens on the client host's own address, so client-to-proxy traffic stays
on that host's loopback, and sends its requests from the client's address
(--source): the capture shows only the rewritten requests going from the
client to the tracker.  Handles absolute-form requests (`GET http://host:port/path`, as
clients send them to an HTTP proxy), one request per connection
(`Connection: close` on both legs).  Each announce is logged as one JSON
line: time, info hash, event, uploaded as sent by the client and as
forwarded.  Stops on SIGTERM.
"""
import argparse
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()


def rewrite(query, factor):
    """Multiplies `uploaded=` in a raw query string, keeping every other byte."""
    info = {}

    def repl(m):
        orig = int(m.group(2))
        info["uploaded_client"] = orig
        info["uploaded_sent"] = orig * factor
        return "%suploaded=%d" % (m.group(1), orig * factor)

    return re.sub(r"(^|&)uploaded=(\d+)", repl, query, count=1), info


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            c = self.request.recv(4096)
            if not c:
                return
            head += c
        head, _, _ = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        u = urllib.parse.urlsplit(target)
        host, port = u.hostname, u.port or 80
        query, info = rewrite(u.query, self.server.factor) if "announce" in u.path else (u.query, {})
        path = u.path + ("?" + query if query else "")
        headers = [l for l in lines[1:] if l.split(":", 1)[0].strip().lower()
                   not in ("connection", "proxy-connection", "keep-alive", "host")]
        req = "%s %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\nConnection: close\r\n\r\n" % (
            method, path, host, port, "\r\n".join(headers))
        if "announce" in u.path:
            params = urllib.parse.parse_qs(u.query, keep_blank_values=True, encoding="latin-1")
            ih = urllib.parse.unquote_to_bytes(re.search(r"info_hash=([^&]*)", u.query).group(1)).hex() \
                if "info_hash=" in u.query else None
            rec = {"t": time.time(), "info_hash": ih, "event": (params.get("event") or [None])[0],
                   "downloaded": int((params.get("downloaded") or ["0"])[0] or 0),
                   "left": int((params.get("left") or ["0"])[0] or 0), **info}
            with LOCK:
                with open(self.server.log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        try:
            src = (self.server.source, 0) if self.server.source else None
            up = socket.create_connection((host, port), timeout=10, source_address=src)
            up.sendall(req.encode("latin-1"))
            resp = b""
            while True:
                c = up.recv(65536)
                if not c:
                    break
                resp += c
            up.close()
        except OSError as e:
            resp = ("HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(str(e)), e)).encode()
        self.request.sendall(resp)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:8080")
    ap.add_argument("--source", default=None, help="address the requests to the tracker leave from")
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    h, p = a.listen.rsplit(":", 1)
    srv = Server((h, int(p)), Handler)
    srv.factor = a.factor
    srv.source = a.source
    srv.log_path = a.log

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ratio proxy on %s, factor %d" % (a.listen, a.factor), flush=True)
    srv.serve_forever()
    srv.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
