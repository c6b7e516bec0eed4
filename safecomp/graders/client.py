"""A minimal OpenAI-compatible chat-completions client (standard library only), with retries.

Used by the `http` grader and by `safecomp.datagen`'s teacher: any server speaking
POST {base_url}/v1/chat/completions (vLLM, SGLang, TGI, llama.cpp, `transformers serve`, hosted APIs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from safecomp.errors import SafecompError

logger = logging.getLogger(__name__)


class RequestFailed(SafecompError):
  """A chat-completions request that failed for good (after retries, or not retryable)."""


def _retryable_status(status: int) -> bool:
  return status in (408, 409, 425, 429) or status >= 500


@dataclasses.dataclass
class ChatClient:
  """Minimal OpenAI-compatible chat-completions client (standard library only).

  Retries connection errors, timeouts, 408/429/5xx and malformed bodies with exponential
  backoff and jitter; the jitter comes from `seed` and the request key, so reruns wait the same.
  """
  base_url: str
  model: str
  api_key_env: str | None = "OPENAI_API_KEY"
  timeout_s: float = 120.0
  max_retries: int = 5
  backoff_s: float = 1.0
  max_backoff_s: float = 60.0
  seed: int = 0
  sleep: Callable[[float], None] = time.sleep

  @property
  def url(self) -> str:
    base = self.base_url.rstrip("/")
    if not base.endswith("/v1"):
      base += "/v1"
    return base + "/chat/completions"

  def _headers(self) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if self.api_key_env:
      key = os.environ.get(self.api_key_env)
      if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers

  def backoff(self, key: str, attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1-based) of the request named `key`."""
    rng = np.random.default_rng([self.seed, zlib.crc32(key.encode("utf-8")), attempt])
    base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
    return float(base * (0.5 + 0.5 * rng.random()))  # "Equal jitter": in [base/2, base].

  def _post_once(self, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
    with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
      payload = response.read()
    try:
      data = json.loads(payload)
      message = data["choices"][0]["message"]
      if not isinstance(message, dict):
        raise TypeError("message is not an object")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
      raise _Malformed(f"malformed chat-completions response: {exc}: {payload[:200]!r}") from None
    return message

  def chat(self, messages: Sequence[Mapping[str, str]], *, key: str = "",
           **params: Any) -> dict[str, Any]:
    """POSTs one chat request; returns the reply's `message` object (content and extras)."""
    body = json.dumps({"model": self.model, "messages": list(messages), **params}).encode()
    last_error = ""
    for attempt in range(self.max_retries + 1):
      if attempt:
        self.sleep(self.backoff(key, attempt))
      try:
        return self._post_once(body)
      except urllib.error.HTTPError as exc:
        detail = exc.read()[:200]
        last_error = f"HTTP {exc.code} from {self.url}: {detail!r}"
        if not _retryable_status(exc.code):
          raise RequestFailed(last_error) from None
      except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError,
              http.client.HTTPException, _Malformed) as exc:
        reason = getattr(exc, "reason", exc)
        last_error = f"{type(exc).__name__} from {self.url}: {reason}"
      logger.info("request %s attempt %d failed: %s", key, attempt + 1, last_error)
    raise RequestFailed(f"{last_error} (after {self.max_retries + 1} attempts)")


class _Malformed(Exception):
  """A 200 response whose body is not a chat completion (retried)."""


def messages_key(messages: Sequence[Mapping[str, str]]) -> str:
  """A stable name for a request (seeds its retry jitter)."""
  blob = json.dumps([dict(m) for m in messages], sort_keys=True).encode("utf-8")
  return hashlib.sha1(blob).hexdigest()[:16]
