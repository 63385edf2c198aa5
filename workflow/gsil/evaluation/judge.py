"""An LLM judge behind any OpenAI-compatible chat-completions endpoint, with strict verdict parsing.

- Transport: the `openai` client (`openai.OpenAI(base_url=..., max_retries=0)`: one pooled HTTP connection, typed
  errors) POSTs to `<base_url>/chat/completions`; the API key is read from the environment variable the config
  names (never from the config itself), and may be absent for local servers.
- The key goes into the Authorization header of requests to base_url's origin and nowhere else. The client reads
  OPENAI_API_KEY, OPENAI_ADMIN_KEY, OPENAI_CUSTOM_HEADERS, OPENAI_ORG_ID and OPENAI_PROJECT_ID from the environment
  by itself, so a request hook (`_HeaderGuard`) sets the headers of every request it sends, redirected ones
  included: `Bearer <our key>` to base_url's origin, no Authorization anywhere else (a 30x to another host or port
  gets no key) and no OpenAI-Organization/-Project headers. Every text that comes back from the endpoint (error
  bodies, answers) has the key, or any 8-character run of it, replaced by `<redacted>` before it reaches an
  exception, a log line, the cache or a result file (some proxies echo request headers).
- Retries are ours, not the client's (`max_retries=0`): connection errors, timeouts, HTTP 408/409/429/5xx and
  unparsable verdicts are retried with exponential backoff (at least the server's `Retry-After` seconds, capped) up
  to `max_attempts`, each retry logged with the redacted reason and counted in `stats`; other HTTP errors (bad
  key, unknown model) fail at once with the server's message.
- Cache: every parsed verdict is appended to a JSONL file keyed by (judge model, sha256 of the request), so an
  interrupted run resumes where it stopped and a rerun costs no API calls. Unparsable answers are not cached
  (a resumed run asks again) but are counted and reported.
- Parsing is strict: single-answer grading needs exactly one rating value `[[N]]` with 1 <= N <= 10; pairwise
  needs exactly one of `[[A]]`, `[[B]]`, `[[C]]` (tie). Anything else is unparsable, never guessed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gsil.io import append_jsonl
from gsil.logutil import GsilError
from gsil.runinfo import redact_secret

log = logging.getLogger("gsil.evaluate")

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_SECONDS = 120.0     # a longer Retry-After is not waited for in full

_RATING_RE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(text: str) -> float | None:
    """The 1-10 rating written as `[[N]]`; None if absent, out of range, or if different ratings are given."""
    values = {float(v) for v in _RATING_RE.findall(text or "")}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if 1.0 <= value <= 10.0 else None


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'C' (tie) written as `[[A]]`/`[[B]]`/`[[C]]`; None if absent or contradictory."""
    values = set(_VERDICT_RE.findall(text or ""))
    return values.pop() if len(values) == 1 else None


class JudgeTransportError(Exception):
    """A failed HTTP exchange; `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _retry_after(headers: Any) -> float | None:
    """The seconds of a `Retry-After: <seconds>` header (the HTTP-date form is ignored), capped; None without one."""
    try:
        value = float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_SECONDS)


class _HeaderGuard:
    """A request hook of the judge's HTTP client: every request it sends (redirected ones included) carries
    `Authorization: Bearer <key>` only when it goes to `origin` (scheme, host, port of base_url) and a key is set,
    and never the OpenAI-Organization/-Project headers the client may take from the environment."""

    def __init__(self, base_url: str, api_key: str | None):
        url = urllib.parse.urlsplit(base_url)
        self.origin = _origin(url.scheme, url.hostname, url.port)
        self.api_key = api_key

    def __call__(self, request: Any) -> None:
        for name in ("Authorization", "OpenAI-Organization", "OpenAI-Project"):
            request.headers.pop(name, None)
        url = request.url
        if self.api_key and _origin(url.scheme, url.host, url.port) == self.origin:
            request.headers["Authorization"] = f"Bearer {self.api_key}"


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int | None]:
    scheme = (scheme or "").lower()
    return scheme, (host or "").lower().strip("[]"), port or {"http": 80, "https": 443}.get(scheme)


@dataclass
class Judgment:
    verdict: Any            # parsed rating/verdict, None when every attempt was unparsable
    raw: str | None         # the judge's last answer
    attempts: int           # API calls made for this judgment (0 when cached)
    unparsable: int         # answers that could not be parsed
    cached: bool


class JudgeClient:
    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 1024, max_attempts: int = 4,
                 backoff_seconds: float = 2.0, request_timeout: float = 120.0, cache: str | Path | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if not base_url or not model:
            raise GsilError("judge: both judge.base_url and judge.model must be set")
        base = base_url.rstrip("/")
        base = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
        self.base_url = base
        self.url = base + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_seconds = float(backoff_seconds)
        self.request_timeout = float(request_timeout)
        self.sleep = sleep
        self.cache_path = Path(cache) if cache else None
        self.cache: dict[str, dict[str, Any]] = {}
        self.stats = {"calls": 0, "cached": 0, "unparsable_answers": 0, "failed_judgments": 0, "http_retries": 0}
        self._client = None                  # the openai client, made on the first request
        if self.cache_path and self.cache_path.exists():
            self._load_cache()

    @classmethod
    def from_protocol(cls, judge: dict[str, Any], default_cache: Path) -> "JudgeClient":
        return cls(judge["base_url"], judge["model"], api_key_env=judge.get("api_key_env"),
                   temperature=judge.get("temperature", 0.0), max_tokens=judge.get("max_tokens", 1024),
                   max_attempts=judge.get("max_attempts", 4), backoff_seconds=judge.get("backoff_seconds", 2.0),
                   request_timeout=judge.get("request_timeout", 120.0), cache=judge.get("cache") or default_cache)

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "max_attempts": self.max_attempts,
                "cache": str(self.cache_path) if self.cache_path else None}

    # -- cache ---------------------------------------------------------------------------------------------------

    def _load_cache(self) -> None:
        with open(self.cache_path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self.cache[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError):
                    # a line cut by an interrupted write: ignore it, the judgment is simply asked again
                    log.warning("judge cache %s:%d is not a complete entry; ignoring it", self.cache_path, line_no)
        log.info("judge cache %s: %d verdicts", self.cache_path, len(self.cache))

    def request_key(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens},
                          sort_keys=True, ensure_ascii=False)
        prompt_hash = hashlib.sha256(body.encode("utf-8")).hexdigest()
        return f"{self.model}:{prompt_hash}"

    # -- transport -----------------------------------------------------------------------------------------------

    def _http(self):
        """The openai client for base_url: no retries of its own (ours count and log them), our timeout, and the
        header guard on its HTTP client (made once; it keeps the connection to the endpoint open)."""
        if self._client is None:
            import openai

            guard = _HeaderGuard(self.base_url, self.api_key)
            http_client = openai.DefaultHttpxClient(event_hooks={"request": [guard]})
            # api_key: a placeholder where none is set, so that the client does not take OPENAI_API_KEY from the
            # environment; the guard decides what is sent.
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "no-key",
                                         timeout=self.request_timeout, max_retries=0, http_client=http_client)
        return self._client

    def _post(self, messages: list[dict[str, str]]) -> str:
        import openai

        try:
            raw = self._http().chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)
        except openai.APIStatusError as err:
            detail = self.redact(err.response.text)[:500]
            raise JudgeTransportError(self.redact(f"HTTP {err.status_code} from {self.url}: {detail}"),
                                      retryable=err.status_code in RETRYABLE_STATUS,
                                      retry_after=_retry_after(err.response.headers)) from None
        except (openai.APIConnectionError, TimeoutError, ConnectionError) as err:   # APITimeoutError included
            reason = f"{err}: {err.__cause__}" if err.__cause__ else str(err)
            raise JudgeTransportError(self.redact(f"cannot reach judge endpoint {self.url}: {reason}"),
                                      retryable=True) from None
        text = raw.http_response.text
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise JudgeTransportError(self.redact(f"judge endpoint {self.url} returned non-JSON: {err}: "
                                                  f"{text[:200]}"), retryable=True) from None
        try:
            return self.redact(body["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            shown = self.redact(json.dumps(body, ensure_ascii=False, default=str))[:300]
            raise JudgeTransportError(f"judge endpoint {self.url} returned no choices[0].message.content: {shown}",
                                      retryable=True) from None

    def redact(self, text: str) -> str:
        """`text` with the API key (or any 8-character run of it) replaced by `<redacted>`."""
        return redact_secret(text, self.api_key)

    def complete(self, messages: list[dict[str, str]]) -> str:
        """One chat completion, retrying transient transport failures with exponential backoff."""
        delay = self.backoff_seconds
        for attempt in range(1, self.max_attempts + 1):
            self.stats["calls"] += 1
            try:
                return self._post(messages)
            except JudgeTransportError as err:
                if not err.retryable or attempt == self.max_attempts:
                    raise GsilError(f"judge request failed after {attempt} attempt(s): {err}") from err
                self.stats["http_retries"] += 1
                wait = max(delay, err.retry_after or 0.0)
                log.warning("judge request failed (%s); retrying in %.1f s", err, wait)
                self.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    # -- judgments -----------------------------------------------------------------------------------------------

    def judge(self, messages: list[dict[str, str]], parse: Callable[[str], Any]) -> Judgment:
        """Ask until the answer parses (at most max_attempts answers); cached verdicts are returned directly."""
        key = self.request_key(messages)
        if key in self.cache:
            self.stats["cached"] += 1
            entry = self.cache[key]
            return Judgment(entry["verdict"], entry["raw"], 0, 0, True)
        unparsable, raw, delay = 0, None, self.backoff_seconds
        for attempt in range(1, self.max_attempts + 1):
            raw = self.complete(messages)
            verdict = parse(raw)
            if verdict is not None:
                entry = {"key": key, "model": self.model, "verdict": verdict, "raw": raw}
                self.cache[key] = entry
                if self.cache_path:
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    append_jsonl(self.cache_path, entry)
                return Judgment(verdict, raw, attempt, unparsable, False)
            unparsable += 1
            self.stats["unparsable_answers"] += 1
            log.warning("judge answer without a parsable verdict (attempt %d/%d): %r", attempt,
                        self.max_attempts, (raw or "")[-200:])
            if attempt < self.max_attempts:
                self.sleep(delay)
                delay *= 2
        self.stats["failed_judgments"] += 1
        return Judgment(None, raw, self.max_attempts, unparsable, False)
