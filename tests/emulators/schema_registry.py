#!/usr/bin/env python3
"""Tiny Confluent Schema Registry emulator (Python 3 stdlib only).

Serves the schemas listed in <schemas-dir>/ids.txt ("<id> <file>" lines,
'#' comments) the way the real registry does:

  GET /schemas/ids/{id}  -> 200 {"schema": "<schema JSON text>"}
                            404 {"error_code": 40403, "message": "Schema not found"}
  GET /_admin/stats      -> {"requests": n}  (schema requests served so far,
                            found or not; stats calls are not counted)

Content-Type is application/vnd.schemaregistry.v1+json. Once listening on
127.0.0.1 it writes its port to --port-file (written atomically), so tests can
use --port 0. Stops on SIGTERM / SIGINT.

Usage: schema_registry.py --port 0 --port-file F --schemas-dir D
"""

import argparse
import json
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def load_ids(schemas_dir):
    """Returns {id: schema text} from ids.txt."""
    schemas = {}
    with open(os.path.join(schemas_dir, "ids.txt"), encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            sid, fname = line.split()
            with open(os.path.join(schemas_dir, fname), encoding="utf-8") as sf:
                # Compact, as the registry stores a canonical form.
                schemas[int(sid)] = json.dumps(json.load(sf),
                                               separators=(",", ":"))
    return schemas


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients reuse connections

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        if self.path == "/_admin/stats":
            with srv.lock:
                n = srv.requests
            self._send(200, {"requests": n})
            return
        m = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
        if not m:
            self._send(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
            return
        with srv.lock:
            srv.requests += 1
        text = srv.schemas.get(int(m.group(1)))
        if text is None:
            self._send(404, {"error_code": 40403,
                             "message": "Schema not found"})
        else:
            self._send(200, {"schema": text})

    def log_message(self, fmt, *args):  # quiet; tests read stats instead
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--schemas-dir", required=True)
    args = ap.parse_args()

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    srv.schemas = load_ids(args.schemas_dir)
    srv.requests = 0
    srv.lock = threading.Lock()

    def stop(_signum, _frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    port = srv.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"schema registry emulator on http://127.0.0.1:{port}",
          file=sys.stderr, flush=True)
    srv.serve_forever()
    srv.server_close()


if __name__ == "__main__":
    main()
