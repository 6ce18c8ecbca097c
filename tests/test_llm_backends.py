"""The OpenAI-compatible HTTP backend against a local endpoint, and the transformers fallback."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

import pytest

from coprov2.llm import LLMConfig, LLMRequest, make_backend
from coprov2.llm.hf_generate import TransformersBackend
from coprov2.llm.openai_http import OpenAIHTTPBackend

SCHEMA = {"type": "object", "properties": {"safe_prompt": {"type": "string"}}, "required": ["safe_prompt"]}


def _send_json(handler: BaseHTTPRequestHandler, answer: dict) -> None:
    payload = json.dumps(answer).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


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
            _send_json(self, answer)

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
    backend.retry_backoff_s = 0.0
    with pytest.raises(
        ValueError, match=r"/v1/chat/completions failed 6 attempts \(last: HTTP 500: engine crashed\)"
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


def _scripted_answer(body: dict) -> dict:
    """A deterministic chat answer to the builder's own requests (unsafe prompts or a safe twin)."""
    user = body["messages"][-1]["content"]
    if '{"prompts"' in user:
        concept = re.search(r'Concept: "([^"]+)"', user).group(1)
        n = int(re.search(r"Write (\d+) different", user).group(1))
        content = {"prompts": [f"a {concept} scene {body['seed'] % 997} take {i}" for i in range(n)]}
    else:
        content = {"safe_prompt": f"a calm garden scene {body['seed'] % 997}"}
    return {"choices": [{"message": {"content": json.dumps(content)}, "finish_reason": "stop"}]}


def _serve(faults: list[str], always: str | None = None):
    """An OpenAI-compatible server answering the builder: the first requests meet ``faults`` in order
    (``429``, ``500``, ``drop``: close the connection without an answer), then answers, unless
    ``always`` fails every request."""
    lock = threading.Lock()
    seen = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                seen["requests"] += 1
                fault = always or (faults.pop(0) if faults else None)
            if fault == "drop":
                self.close_connection = True
                return
            if fault is not None:
                self.send_response(int(fault))
                if fault == "429":
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(b"busy")
                return
            _send_json(self, _scripted_answer(body))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _prompts_args(url: str, output_dir, *overrides: str) -> list[str]:
    """The prompts-stage command; ``overrides`` (flag, value, ...) replace the defaults' values (a flag given
    twice is refused)."""
    new = dict(zip(overrides[::2], overrides[1::2], strict=True))
    args = [
        "--llm_backend", "openai", "--llm_base_url", url, "--llm_model", "served", "--t2i_model", "tiny:sd15",
        "--limit_concepts", "1", "--prompts_per_concept", "2", "--num_shards", "2", "--stage", "prompts",
        "--llm_retry_backoff_s", "0.01", "--llm_max_attempts", "4", "--no_progress",
        "--output_dir", str(output_dir),
    ]  # fmt: skip
    for k in range(len(args) - 1):
        if args[k] in new:
            args[k + 1] = new.pop(args[k])
    return args + [item for pair in new.items() for item in pair]


def test_a_flaky_server_gives_the_same_pairs_as_a_healthy_one(tmp_path):
    from coprov2.build import main

    results = {}
    # the flaky run also changes every option the resume guard treats as output-neutral
    neutral = ["--llm_concurrency", "1", "--llm_timeout_s", "30", "--llm_max_attempts", "5",
               "--llm_retry_backoff_s", "0.02", "--llm_api_key_env", "OTHER_KEY"]  # fmt: skip
    for name, faults, extra in (("healthy", [], []), ("flaky", ["429", "500", "drop"], neutral)):
        server, seen = _serve(faults)
        url = f"http://127.0.0.1:{server.server_port}/v1"
        assert main(_prompts_args(url, tmp_path / name, *extra)) == 0
        server.shutdown()
        prompts = tmp_path / name / "prompts"
        results[name] = {p.name: p.read_bytes() for p in sorted(prompts.glob("shard-*"))}
        results[name + "_requests"] = seen["requests"]
    assert results["flaky"] == results["healthy"]
    assert (tmp_path / "flaky" / "prompts" / "config.json").read_bytes() == (
        tmp_path / "healthy" / "prompts" / "config.json"
    ).read_bytes()
    assert results["flaky"]["shard-00000-of-00002.stats.json"]
    assert results["flaky_requests"] == results["healthy_requests"] + 3


def test_a_server_that_always_fails_ends_in_a_clear_error_and_no_finished_shard(
    tmp_path, capsys, monkeypatch
):
    from coprov2.build import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-printed")
    server, seen = _serve([], always="503")
    url = f"http://127.0.0.1:{server.server_port}/v1"
    assert main(_prompts_args(url, tmp_path)) == 2
    server.shutdown()
    err = capsys.readouterr().err
    assert f"error: {url}/chat/completions failed 4 attempts (last: HTTP 503: busy)" in err
    assert "sk-never-printed" not in err
    assert not list((tmp_path / "prompts").glob("*.stats.json"))
    assert seen["requests"] % 4 == 0
