"""A scripted OpenAI-compatible chat server for the LLM proposer's tests (stdlib only, one thread per request).

    with LLMServer() as server:                  # listens on 127.0.0.1, a free port
        server.script(reply("..."), error(429, retry_after="1"), reply("..."))
        ... the code under test calls server.url (".../v1") ...
        server.requests                          # what arrived: time, headers, JSON body

Replies are served in script order; when the script is empty, `responder(request_body)` (if set)
makes the reply, else the server answers 500 "script exhausted". A reply may carry a delay (the
server holds the answer that long: a slow model) and extra headers.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply(content: str | None, prompt_tokens: int = 1000, completion_tokens: int = 200, delay: float = 0.0,
          finish_reason: str = "stop", refusal: str | None = None) -> dict:
    """A 200 answer with an assistant message and usage."""
    return {"status": 200, "content": content, "usage": (prompt_tokens, completion_tokens), "delay": delay,
            "finish_reason": finish_reason, "refusal": refusal}


def error(status: int, message: str = "scripted error", retry_after: str | None = None, delay: float = 0.0) -> dict:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return {"status": status, "error": message, "headers": headers, "delay": delay}


class LLMServer:
    def __init__(self):
        self._lock = threading.Lock()
        self._script: list[dict] = []
        self.requests: list[dict] = []
        self.responder = None  # callable(body: dict) -> reply dict, used once the script is empty
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                with server._lock:
                    server.requests.append({"time": arrived, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                            "body": body})
                    step = server._script.pop(0) if server._script else None
                if step is None and server.responder is not None:
                    step = server.responder(body)
                if step is None:
                    step = error(500, "script exhausted")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    step = error(404, f"no route {self.path}")
                if step.get("delay"):
                    server._stop.wait(step["delay"])
                try:
                    self._answer(step, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): fine

            def _answer(self, step: dict, body: dict):
                if step["status"] == 200:
                    p, c = step["usage"]
                    payload = {
                        "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion",
                        "created": int(time.time()), "model": body.get("model", "unknown"),
                        "choices": [{"index": 0, "finish_reason": step["finish_reason"], "logprobs": None,
                                     "message": {"role": "assistant", "content": step["content"],
                                                 "refusal": step["refusal"]}}],
                        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                    }
                else:
                    payload = {"error": {"message": step["error"], "type": "scripted", "code": step["status"]}}
                data = json.dumps(payload).encode()
                self.send_response(step["status"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                for k, v in step.get("headers", {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "LLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes any reply held by a delay
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def script(self, *steps: dict) -> None:
        with self._lock:
            self._script.extend(steps)

    def bodies(self) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.requests]

    def times(self) -> list[float]:
        with self._lock:
            return sorted(r["time"] for r in self.requests)
