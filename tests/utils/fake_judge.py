"""A fake of the network at the transport: an OpenAI-compatible HTTP server answering ragas' judge prompts.

The only real judge these machines can run is a random-weight tiny vLLM, whose output is never
well-formed; this server stands in for a competent judge so the success path can be tested. It
serves ``POST /v1/chat/completions`` with canned JSON chosen by the prompt's instruction, or
misbehaves on purpose (``mode``: "ok", "garbage", "slow"), and records every request body.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def canned(prompt: str) -> dict[str, Any]:
    """A well-formed answer for whichever ragas prompt this is (statements, verdicts, or a question)."""
    question = json.loads(prompt.rsplit("input: ", 1)[1].rsplit("Output:", 1)[0]) if "input: " in prompt else {}
    if prompt.startswith("Given a question and an answer"):
        return {"statements": ["The answer makes one claim.", "It makes a second claim."]}
    if prompt.startswith("Your task is to judge the faithfulness"):
        return {"statements": [{"statement": s, "reason": "in the context", "verdict": 1 if i == 0 else 0}
                               for i, s in enumerate(question.get("statements", []))]}  # fmt: skip
    return {"question": "How many PTO days do employees get?", "noncommittal": 0}


class FakeJudge:
    """State of one fake server."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.url = ""


@contextmanager
def fake_judge() -> Iterator[FakeJudge]:
    """Serve on a free loopback port until the block ends."""
    state = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            if state.mode == "slow":
                time.sleep(3)
            prompt = body["messages"][-1]["content"]
            content = json.dumps(canned(prompt)) if state.mode == "ok" else "{statements: [oops"
            payload = {
                "id": "fake", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }  # fmt: skip
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # "slow": the client gave up
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
