"""The OpenAI-compatible HTTP backend against a local endpoint, and the transformers fallback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from coprov2.llm import LLMConfig, LLMRequest, make_backend
from coprov2.llm.hf_generate import TransformersBackend
from coprov2.llm.openai_http import OpenAIHTTPBackend

SCHEMA = {"type": "object", "properties": {"safe_prompt": {"type": "string"}}, "required": ["safe_prompt"]}


@pytest.fixture
def endpoint():
    """A local OpenAI-compatible server that records what it receives."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if body["seed"] == 500:
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"engine crashed")
                return
            answer = {
                "choices": [
                    {
                        "message": {"content": f'{{"safe_prompt":"seed {body["seed"]}"}}'},
                        "finish_reason": "stop",
                    }
                ]
            }
            payload = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1", received
    server.shutdown()


def test_openai_backend_sends_schema_seed_and_key(endpoint, monkeypatch):
    url, received = endpoint
    monkeypatch.setenv("MY_KEY", "sk-test-123")
    backend = OpenAIHTTPBackend("served-model", url, api_key_env="MY_KEY", concurrency=4, show_progress=False)
    messages = [{"role": "user", "content": "hi"}]
    answers = backend.generate(
        [LLMRequest(messages, seed=s, schema=SCHEMA, max_tokens=32) for s in (11, 12, 13)]
    )
    assert [a.text for a in answers] == [f'{{"safe_prompt":"seed {s}"}}' for s in (11, 12, 13)]
    assert {r["path"] for r in received} == {"/v1/chat/completions"}
    assert {r["auth"] for r in received} == {"Bearer sk-test-123"}
    body = next(r["body"] for r in received if r["body"]["seed"] == 12)
    assert body["model"] == "served-model" and body["max_tokens"] == 32
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
    }


def test_openai_backend_errors_name_the_url_not_the_key(endpoint, monkeypatch):
    url, _ = endpoint
    monkeypatch.setenv("MY_KEY", "sk-secret-456")
    backend = OpenAIHTTPBackend("m", url, api_key_env="MY_KEY", show_progress=False)
    with pytest.raises(
        RuntimeError, match=r"/v1/chat/completions answered HTTP 500: engine crashed"
    ) as error:
        backend.generate([LLMRequest([{"role": "user", "content": "x"}], seed=500)])
    assert "sk-secret-456" not in str(error.value)


def test_openai_backend_needs_a_url():
    with pytest.raises(ValueError, match="needs --llm_base_url"):
        make_backend(LLMConfig(backend="openai"))


def test_transformers_backend_is_seeded_per_request(tiny_models):
    backend = TransformersBackend(str(tiny_models["lm"]), dtype="float32", show_progress=False)
    messages = [{"role": "user", "content": "Write JSON."}]
    requests = [LLMRequest(messages, seed=s, max_tokens=12) for s in (1, 2, 1)]
    first, second, again = backend.generate(requests)
    assert first.text == again.text != second.text
    assert first.finish_reason in {"stop", "length"} and first.meta["tokens"] <= 12
