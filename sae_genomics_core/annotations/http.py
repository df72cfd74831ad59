"""HTTP for the annotation clients: one session per service, done the way public services ask for.

- retries with exponential backoff on connection errors, timeouts, 429 and 5xx (urllib3 ``Retry``),
  honouring ``Retry-After`` (and DisGeNET's ``x-rate-limit-retry-after-seconds``); a wait longer than
  ``max_retry_after_s`` fails at once with a clear error instead of blocking a run for hours; a
  service that refuses connections or does not answer is retried only ``NO_ANSWER_RETRIES`` times
  (it is down, not busy), and the error says which of the two it was;
- a (connect, read) timeout on every request, and an optional bound on the client's total time
  (``max_total_s``: one refresh), enforced across retries, backoff waits and streamed downloads;
- a per-service rate limit (minimum interval between requests, shared by threads);
- conditional GET (ETag / Last-Modified) for bulk files, cached under ``$SAE_GENOMICS_HOME/cache/http``;
- streamed downloads to a temporary file, sha256 while writing, length checked, atomic rename;
- a User-Agent naming the project;
- secrets (API keys) redacted from every error message and from urllib3's own log lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sae_genomics_core.annotations.errors import AnnotationError

try:
    from importlib.metadata import version as _version

    _PROJECT_VERSION = _version("sae-genomics")
except Exception:  # running from a source tree without an install
    _PROJECT_VERSION = "0"

USER_AGENT = f"sae-genomics/{_PROJECT_VERSION} (single-cell SAE interpretability; python-requests)"
RETRY_STATUSES = (429, 500, 502, 503, 504)
CHUNK_BYTES = 1 << 20
NO_ANSWER_RETRIES = 2  # retries of a refused connection or a timeout (429 and 5xx get `retries`)


class HttpError(AnnotationError):
    """A request failed for good (after retries); the message names the service and never a secret."""


class RateLimited(HttpError):
    """The service asked us to wait longer than we are willing to block a run."""


class OutOfTime(HttpError):
    """The client's total time (one refresh's `max_total_s`) is spent; nothing more is attempted."""


class _Deadline:
    """A bound on a client's total time from its creation (None: no bound)."""

    def __init__(self, max_total_s: float | None):
        self.max_total_s = max_total_s or None  # 0 = no bound
        self.started = time.monotonic()

    def remaining(self) -> float | None:
        if self.max_total_s is None:
            return None
        return self.max_total_s - (time.monotonic() - self.started)

    def check(self, wait_s: float = 0.0, last: str = "") -> None:
        """OutOfTime when the bound is spent, or would be after waiting `wait_s` more."""
        remaining = self.remaining()
        if remaining is not None and remaining < wait_s + 0.001:
            waited = time.monotonic() - self.started
            after = f"; last problem: {last}" if last else ""
            raise OutOfTime(
                f"gave up after {_seconds(waited)} s: one refresh may take at most {self.max_total_s:g} s "
                f"(max_refresh_s in external/sources.yaml){after}. Try again later, or raise max_refresh_s "
                "for this source"
            )


class _Retry(Retry):
    """urllib3 Retry that also reads DisGeNET's retry header and refuses absurd waits."""

    max_retry_after_s: float = 300.0
    deadline: _Deadline | None = None

    def new(self, **kw: Any) -> _Retry:
        renewed = super().new(**kw)
        renewed.max_retry_after_s = self.max_retry_after_s
        renewed.deadline = self.deadline
        return renewed

    def increment(self, *args: Any, **kw: Any) -> Retry:
        if self.deadline:
            error, response = kw.get("error"), kw.get("response")
            last = _failure(error)[1] if error else f"HTTP {response.status}" if response else ""
            self.deadline.check(last=last)
        return super().increment(*args, **kw)

    def _sleep_backoff(self) -> None:
        if self.deadline:
            self.deadline.check(self.get_backoff_time(), "waiting to retry")
        super()._sleep_backoff()

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        if seconds is None:
            header = response.headers.get("x-rate-limit-retry-after-seconds")
            if header is not None:
                try:
                    seconds = max(float(header), 0.0)
                except ValueError:
                    seconds = None
        return seconds

    def sleep_for_retry(self, response: Any) -> bool:
        seconds = self.get_retry_after(response)
        if seconds is not None and seconds > self.max_retry_after_s:
            raise RateLimited(
                f"the service asked to retry after {seconds:.0f} s (more than the {self.max_retry_after_s:.0f} s "
                "this client waits); the quota is probably spent: try again later or raise max_retry_after_s"
            )
        if seconds is not None and self.deadline:
            self.deadline.check(seconds, f"the service asked to retry after {seconds:g} s")
        return super().sleep_for_retry(response)


class _RedactingFilter(logging.Filter):
    """One process-wide filter on the HTTP libraries' loggers; clients register their secrets with it."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.installed: set[str] = set()

    def install(self, secrets: Sequence[str]) -> None:
        self.secrets.update(s for s in secrets if s)
        # a logger's filters do not apply to its children's records: filter every urllib3 logger
        names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("urllib3", "requests")]
        for name in {"urllib3", "urllib3.connectionpool", "urllib3.util.retry", "requests", *names}:
            if name not in self.installed:
                logging.getLogger(name).addFilter(self)
                self.installed.add(name)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


_REDACTOR = _RedactingFilter()


class RateLimiter:
    """At most one request per ``min_interval_s`` for one service, across threads."""

    def __init__(self, min_interval_s: float):
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._next_at = 0.0

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_at:
                time.sleep(self._next_at - now)
                now = self._next_at
            self._next_at = now + self.min_interval_s


@dataclass(frozen=True)
class Download:
    """A bulk file on disk: where, its sha256 and size, and what the server said about its version."""

    path: Path
    sha256: str
    size: int
    etag: str | None
    last_modified: str | None
    from_cache: bool
    fetched_at: str


class HttpClient:
    """One service's HTTP: retries, timeouts, rate limit, conditional-GET cache, redaction of secrets."""

    def __init__(
        self,
        service: str,
        cache_dir: Path | None = None,
        *,
        min_interval_s: float = 0.0,
        timeout_s: tuple[float, float] = (10.0, 60.0),
        retries: int = 5,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 300.0,
        max_total_s: float | None = None,
        secrets: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ):
        self.service = service
        self.cache_dir = cache_dir / service if cache_dir else None
        self.timeout_s = timeout_s
        self.deadline = _Deadline(max_total_s)  # starts now: a client serves one refresh
        self.secrets = tuple(s for s in secrets if s)
        self.limiter = RateLimiter(min_interval_s)
        retry = _Retry(
            total=retries,
            connect=min(retries, NO_ANSWER_RETRIES),
            read=min(retries, NO_ANSWER_RETRIES),
            status=retries,
            backoff_factor=backoff_s,
            backoff_max=60.0,
            status_forcelist=RETRY_STATUSES,
            # GraphQL and batch lookups use POST for reads; none of our POSTs change server state
            allowed_methods=frozenset({"GET", "HEAD", "POST"}),
            respect_retry_after_header=True,
            retry_after_max=10**9,  # read the true wait; sleep_for_retry refuses the absurd ones
            raise_on_status=False,
        )
        retry.max_retry_after_s = max_retry_after_s
        retry.deadline = self.deadline
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers.update(headers or {})
        if self.secrets:
            _REDACTOR.install(self.secrets)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def check_time(self, last: str = "") -> None:
        """OutOfTime (naming the service) once the client's total time is spent."""
        try:
            self.deadline.check(last=last)
        except OutOfTime as error:
            raise OutOfTime(f"{self.service}: {error}") from None

    def _timeouts(self) -> tuple[float, float]:
        """The (connect, read) timeout, shortened to what is left of the total bound."""
        remaining = self.deadline.remaining()
        if remaining is None:
            return self.timeout_s
        return (min(self.timeout_s[0], remaining), min(self.timeout_s[1], remaining))

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.check_time()
        self.limiter.wait()
        self.check_time()
        timeout = kwargs.setdefault("timeout", self._timeouts())
        started = time.monotonic()
        try:
            response = self.session.request(method, url, **kwargs)
        except HttpError as error:  # RateLimited, OutOfTime: raised inside urllib3's retry loop
            raise type(error)(f"{self.service}: {error}") from None
        except requests.exceptions.RequestException as error:
            # `from None`: the original exception text may hold a URL with a key in it
            raise self._failed(error, url, timeout, time.monotonic() - started) from None
        return response

    def _failed(
        self, error: requests.exceptions.RequestException, url: str, timeout: Any, took_s: float
    ) -> HttpError:
        """Refused, unresolved, timed out or other: each says so, with what to do."""
        kind = _failure(error)[0]
        where, took = self.redact(url), f"{_seconds(took_s)} s"
        connect_s, read_s = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        if kind == "refused":
            return HttpError(
                f"{self.service}: connection to {where} refused (gave up after {took}): nothing listens "
                "there, so the service is down or the address is wrong; check the address in "
                "external/sources.yaml, or try again later"
            )
        if kind == "unresolved":
            return HttpError(
                f"{self.service}: the host of {where} does not resolve; check the address in "
                "external/sources.yaml and the network"
            )
        if kind == "connect timeout":
            return HttpError(
                f"{self.service}: no connection to {where} within {_seconds(connect_s)} s after retries "
                f"({took} in all); the service or the network is down: try again later"
            )
        if kind == "read timeout":
            return HttpError(
                f"{self.service}: no answer from {where} within {_seconds(read_s)} s after retries "
                f"({took} in all); the service may be down or overloaded: try again later"
            )
        return HttpError(
            f"{self.service}: request to {where} failed after retries: "
            f"{self.redact(type(error).__name__ + ': ' + str(error))}"
        )

    def _check(self, response: requests.Response, url: str) -> None:
        if response.status_code in (401, 403):
            raise HttpError(
                f"{self.service}: access refused ({response.status_code}) at {self.redact(url)}; check the API key "
                "in the environment variable named in external/sources.yaml"
            )
        if response.status_code == 429:
            raise HttpError(f"{self.service}: still rate-limited (429) after retries; try again later")
        if response.status_code >= 400:
            snippet = self.redact(response.text[:200]).replace("\n", " ")
            raise HttpError(f"{self.service}: HTTP {response.status_code} from {self.redact(url)}: {snippet}")

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        response = self._request("GET", url, **kwargs)
        self._check(response, url)
        return response

    def get_json(self, url: str, **kwargs: Any) -> Any:
        return _json_of(self.get(url, **kwargs), self)

    def post_json(self, url: str, payload: Any, **kwargs: Any) -> Any:
        response = self._request("POST", url, json=payload, **kwargs)
        self._check(response, url)
        return _json_of(response, self)

    def download(self, url: str, name: str, *, expected_sha256: str | None = None) -> Download:
        """Fetch a bulk file into the cache, re-using the cached copy when the server says it is unchanged."""
        if self.cache_dir is None:
            raise ValueError("download() needs a cache_dir")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / name
        meta_path = target.with_name(target.name + ".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() and target.exists() else None
        response = self._request("GET", url, headers=_conditional_headers(meta), stream=True)
        with response, _cut_at_deadline(response, self.deadline):
            if response.status_code == 304 and meta:
                return Download(
                    target,
                    meta["sha256"],
                    meta["size"],
                    meta.get("etag"),
                    meta.get("last_modified"),
                    True,
                    meta["fetched_at"],
                )
            self._check(response, url)
            sha256, size = self._save_body(response, url, target, expected_sha256)
        return self._record(response, url, target, meta_path, sha256, size)

    def _save_body(
        self, response: requests.Response, url: str, target: Path, expected_sha256: str | None
    ) -> tuple[str, int]:
        """Stream the body to a temporary file, check its length and checksum, then move it to `target`."""
        partial = target.with_name(target.name + f".part-{os.getpid()}")
        digest, size = hashlib.sha256(), 0
        try:
            with open(partial, "wb") as handle:
                for chunk in _chunks(response, self, url):
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            expected_size = response.headers.get("Content-Length")
            # with Content-Encoding the header counts compressed bytes; only compare plain bodies
            if expected_size and not response.headers.get("Content-Encoding") and int(expected_size) != size:
                raise HttpError(
                    f"{self.service}: download of {self.redact(url)} truncated ({size} of {expected_size} "
                    "bytes); try again"
                )
            sha256 = digest.hexdigest()
            if expected_sha256 and sha256 != expected_sha256:
                raise HttpError(
                    f"{self.service}: checksum mismatch for {self.redact(url)} (got {sha256[:12]}…, expected "
                    f"{expected_sha256[:12]}…); the file changed or was corrupted: try again"
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return sha256, size

    def _record(
        self, response: requests.Response, url: str, target: Path, meta_path: Path, sha256: str, size: int
    ) -> Download:
        """Write what the server said about the new file beside it (the next conditional GET sends it)."""
        fetched_at = datetime.now(UTC).isoformat(timespec="seconds")
        record = {
            "url": self.redact(url),
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "sha256": sha256,
            "size": size,
            "fetched_at": fetched_at,
        }
        meta_partial = meta_path.with_name(meta_path.name + ".part")
        meta_partial.write_text(json.dumps(record, indent=1))
        os.replace(meta_partial, meta_path)
        return Download(target, sha256, size, record["etag"], record["last_modified"], False, fetched_at)


def _conditional_headers(meta: dict[str, Any] | None) -> dict[str, str]:
    """If-None-Match / If-Modified-Since from the cached copy's record (none without a cached copy)."""
    headers: dict[str, str] = {}
    if meta and meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta and meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    return headers


def _failure(error: BaseException) -> tuple[str, str]:
    """(kind, words) of a request's failure: refused, unresolved, connect or read timeout, other."""
    inner = error.args[0] if isinstance(error, requests.exceptions.RequestException) and error.args else error
    # retries exhausted: MaxRetryError(reason=…); else the urllib3 error, or the error itself
    reason = getattr(inner, "reason", None) or (inner if isinstance(inner, BaseException) else error)
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return "unresolved", "host name does not resolve"
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError subclass
        if isinstance(reason.__cause__, ConnectionRefusedError) or "refused" in str(reason).lower():
            return "refused", "connection refused"
        return "other", "could not connect"
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError | requests.exceptions.ConnectTimeout):
        return "connect timeout", "no connection (timed out)"
    if isinstance(reason, TimeoutError | urllib3.exceptions.TimeoutError | requests.exceptions.Timeout):
        return "read timeout", "no answer (timed out)"
    return "other", type(reason).__name__


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


def _chunks(response: requests.Response, client: HttpClient, url: str) -> Iterator[bytes]:
    last = f"downloading {client.redact(url)}"
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            client.check_time(last)
            yield chunk
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as error:
        client.check_time(last)  # the connection was cut at the deadline: say so
        raise HttpError(
            f"{client.service}: download of {client.redact(url)} broke off ({type(error).__name__}); try again"
        ) from None
    client.check_time(last)


@contextmanager
def _cut_at_deadline(response: requests.Response, deadline: _Deadline) -> Iterator[None]:
    """Shut the download's socket when the total time is spent: a read timeout alone does not
    bound a body that trickles in, since each byte restarts it."""
    remaining = deadline.remaining()
    if remaining is None:
        yield
        return
    timer = threading.Timer(max(remaining, 0.0), _shut, (response,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _shut(response: requests.Response) -> None:
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        with suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def _json_of(response: requests.Response, client: HttpClient) -> Any:
    try:
        return response.json()
    except ValueError:
        snippet = client.redact(response.text[:120]).replace("\n", " ")
        raise HttpError(
            f"{client.service}: the answer from {client.redact(response.url)} is not valid JSON "
            f"(starts {snippet!r}); the service may be failing: try again later"
        ) from None
