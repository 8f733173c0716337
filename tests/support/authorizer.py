"""A real HTTP authorizer for the tests: a threaded HTTP server answering each POST with what
the test scripted for the identity it carries, and recording every call."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class AuthorizerServer:
    """``answers`` maps an identity value (the ``X-Token`` header the gateway passes on) to
    what to do: a dict (answered as JSON), ``("status", code)``, ``("raw", bytes)`` or
    ``("sleep", seconds, dict)``.  ``calls`` holds every request body received."""

    def __init__(self):
        self.answers = {}
        self.calls = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length))
                outer.calls.append(request)
                token = request["headers"].get("X-Token", "")
                action = outer.answers.get(token, {"status": "deny"})
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = action[2]
                if isinstance(action, tuple) and action[0] == "status":
                    self.send_response(action[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = action[1] if isinstance(action, tuple) else json.dumps(action).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/authorize"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
