"""Any OpenAI-compatible chat endpoint (``vllm serve``, TGI, a hosted API), requests sent concurrently.

Written on the standard library rather than the ``openai`` client: one JSON POST per request is all
it takes, and it keeps the client out of our dependencies. The server batches concurrent requests.

A busy or flaky server does not end the build: 429, 5xx, dropped connections and timeouts are
retried with exponential backoff and full jitter (``Retry-After`` honoured), up to ``max_attempts``
tries per request; then the error names the endpoint and the last failure (never the key), and the
shard is not marked done, so a rerun retries it. Other 4xx answers are the request's fault and fail
at once.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from coprov2.errors import UserError
from coprov2.llm.base import LLMAnswer, LLMRequest

logger = logging.getLogger(__name__)

#: Longest single wait between two attempts, whatever the backoff or Retry-After say.
MAX_BACKOFF_S = 60.0


class _Retryable(Exception):
    """A failure worth another attempt; ``wait_s`` is the server's Retry-After, if it sent one."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return float(error.headers.get("Retry-After", ""))
    except ValueError:
        return None


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
        max_attempts: int = 6,
        retry_backoff_s: float = 1.0,
        show_progress: bool = True,
    ) -> None:
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        # The key is read here and sent in a header; it never goes into a message, log or error.
        self._api_key = os.environ.get(api_key_env)
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
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

    def _post(self, request: LLMRequest) -> dict:
        """One attempt; raises :class:`_Retryable` for what another attempt may fix."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        http_request = urllib.request.Request(
            self.url, data=json.dumps(self._body(request)).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            message = f"HTTP {error.code}: {detail}"
            if error.code in (408, 429) or error.code >= 500:
                raise _Retryable(message, _retry_after(error)) from None
            raise UserError(f"{self.url} answered {message}") from None
        except urllib.error.URLError as error:
            raise _Retryable(f"cannot reach the server: {error.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
            raise _Retryable(f"connection failed: {type(error).__name__}: {error}") from None
        except json.JSONDecodeError as error:
            raise _Retryable(f"the answer is not JSON ({error})") from None

    def _one(self, request: LLMRequest) -> LLMAnswer:
        for attempt in range(1, self.max_attempts + 1):
            try:
                payload = self._post(request)
                break
            except _Retryable as error:
                if attempt == self.max_attempts:
                    raise UserError(
                        f"{self.url} failed {self.max_attempts} attempts (last: {error}); check the server, "
                        "or raise --llm_max_attempts / --llm_retry_backoff_s, then rerun to resume"
                    ) from None
                backoff = random.uniform(0, self.retry_backoff_s * 2 ** (attempt - 1))
                wait = min(MAX_BACKOFF_S, error.wait_s if error.wait_s is not None else backoff)
                logger.warning(
                    "%s: %s; attempt %d of %d in %.1f s",
                    self.url,
                    error,
                    attempt + 1,
                    self.max_attempts,
                    wait,
                )
                time.sleep(wait)
        choice = payload["choices"][0]
        return LLMAnswer(choice["message"].get("content") or "", choice.get("finish_reason"))

    def generate(self, requests: Sequence[LLMRequest]) -> list[LLMAnswer]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = pool.map(self._one, requests)
            return list(
                tqdm(answers, total=len(requests), disable=not self.show_progress, desc="LLM requests")
            )
