"""Any OpenAI-compatible chat endpoint (``vllm serve``, TGI, a hosted API), requests sent concurrently.

Written on the standard library rather than the ``openai`` client: one JSON POST per request is all
it takes, and it keeps the client out of our dependencies. The server batches concurrent requests.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from coprov2.llm.base import LLMAnswer, LLMRequest


class OpenAIHTTPBackend:
    guided = True

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 32,
        timeout_s: float = 600.0,
        show_progress: bool = True,
    ) -> None:
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        # The key is read here and sent in a header; it never goes into a message, log or error.
        self._api_key = os.environ.get(api_key_env)
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.show_progress = show_progress

    def _body(self, request: LLMRequest) -> dict:
        body = {
            "model": self.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        if request.schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.schema, "strict": True},
            }
        return body

    def _one(self, request: LLMRequest) -> LLMAnswer:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        http_request = urllib.request.Request(
            self.url, data=json.dumps(self._body(request)).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise RuntimeError(f"{self.url} answered HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise RuntimeError(f"cannot reach {self.url}: {error.reason}") from None
        choice = payload["choices"][0]
        return LLMAnswer(choice["message"].get("content") or "", choice.get("finish_reason"))

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMAnswer]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = pool.map(self._one, requests)
            return list(
                tqdm(answers, total=len(requests), disable=not self.show_progress, desc="LLM requests")
            )
