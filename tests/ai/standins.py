"""Local HTTP stand-ins for Ollama and the Anthropic API, speaking their wire formats.

Each serves on 127.0.0.1 in a thread. A test queues what the next calls answer
(``script``); when the queue is empty the default answer is given. Every request
is recorded (path, headers, JSON body) so a test can check what was asked.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# One scripted answer: ("text", str) | ("status", code, body) | ("raw", bytes)
# | ("slow", seconds, answer)
Answer = tuple[Any, ...]


class StandIn:
    def __init__(self) -> None:
        self.script: deque[Answer] = deque()
        self.default: Answer = ("text", "{}")
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def queue(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def chats(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    # --- served in the server's threads ----------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._serve(self, "GET", None)

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(size) or b"null")
                standin._serve(self, "POST", body)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler, method: str, body: Any) -> None:
        self.requests.append(
            {"method": method, "path": h.path, "headers": dict(h.headers), "body": body}
        )
        status, payload = self.route(method, h.path, body)
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def next_answer(self) -> Answer:
        return self.script.popleft() if self.script else self.default

    def answer(self, ans: Answer, model: str) -> tuple[int, bytes]:
        kind = ans[0]
        if kind == "slow":
            time.sleep(ans[1])
            return self.answer(ans[2], model)
        if kind == "status":
            return ans[1], json.dumps(ans[2]).encode()
        if kind == "raw":
            return 200, ans[1]
        return 200, json.dumps(self.success(ans[1], model)).encode()

    def route(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        raise NotImplementedError

    def success(self, text: str, model: str) -> dict[str, Any]:
        raise NotImplementedError


class Ollama(StandIn):
    """``GET /api/tags`` and ``POST /api/chat`` (stream false) as Ollama answers them."""

    def __init__(self, models: tuple[str, ...] = ("llama2:latest",)) -> None:
        self.models = list(models)
        self.schema_format = True  # False: an Ollama older than 0.5 (format "json" only)
        super().__init__()

    def route(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if method == "GET" and path == "/api/tags":
            tags = [
                {"name": m, "model": m, "size": 3826793677, "digest": "78e26419b446"}
                for m in self.models
            ]
            return 200, json.dumps({"models": tags}).encode()
        if method == "POST" and path == "/api/chat":
            model = body["model"]
            if model not in self.models and f"{model}:latest" not in self.models:
                err = {"error": f'model "{model}" not found, try pulling it first'}
                return 404, json.dumps(err).encode()
            if isinstance(body.get("format"), dict) and not self.schema_format:
                err = {"error": 'invalid format: expected "json" or a JSON schema'}
                return 400, json.dumps(err).encode()
            return self.answer(self.next_answer(), model)
        return 404, b"404 page not found"

    def success(self, text: str, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": "2026-11-25T19:00:00.000000Z",
            "message": {"role": "assistant", "content": text},
            "done_reason": "stop",
            "done": True,
            "total_duration": 1_000_000,
            "eval_count": 10,
        }


class Anthropic(StandIn):
    """``POST /v1/messages`` and ``GET /v1/models`` as the Anthropic API answers them."""

    API_KEY = "sk-ant-test"

    def route(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        # The SDK sends the key as ``x-api-key`` (1.x) or ``Authorization: Bearer`` (2.x).
        headers = {k.lower(): v for k, v in self.requests[-1]["headers"].items()}
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.API_KEY:
            return 401, json.dumps(error("authentication_error", "invalid x-api-key")).encode()
        if method == "GET" and path.startswith("/v1/models"):
            data = [
                {
                    "type": "model",
                    "id": "claude-sonnet-4-6",
                    "display_name": "Claude",
                    "created_at": "2025-09-29T00:00:00Z",
                }
            ]
            page = {
                "data": data,
                "has_more": False,
                "first_id": "claude-sonnet-4-6",
                "last_id": "claude-sonnet-4-6",
            }
            return 200, json.dumps(page).encode()
        if method == "POST" and path == "/v1/messages":
            return self.answer(self.next_answer(), body["model"])
        return 404, json.dumps(error("not_found_error", f"no route {path}")).encode()

    def success(self, text: str, model: str) -> dict[str, Any]:
        return {
            "id": "msg_01standin",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 34},
        }


def error(kind: str, message: str) -> dict[str, Any]:
    """The Anthropic error body."""
    return {"type": "error", "error": {"type": kind, "message": message}}


OVERLOADED = ("status", 529, error("overloaded_error", "Overloaded"))
RATE_LIMITED = ("status", 429, error("rate_limit_error", "Number of requests exceeded"))
NOT_FOUND = ("status", 404, error("not_found_error", "model: claude-nope"))


def refused_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
