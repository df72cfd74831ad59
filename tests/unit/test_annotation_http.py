"""The HTTP layer against a local fake service: retries, Retry-After, timeouts, truncation, caching, secrets."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from sae_genomics_core.annotations.http import USER_AGENT, HttpClient, HttpError, RateLimited
from tests.fakes.http_service import Answer, FakeService


def client(tmp_path: Path, **options: object) -> HttpClient:
    defaults = {"backoff_s": 0.01, "timeout_s": (2.0, 2.0)}
    return HttpClient("testsvc", tmp_path / "cache", **{**defaults, **options})  # type: ignore[arg-type]


def test_429_waits_for_retry_after_then_succeeds(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/x", Answer.json({}, status=429, headers={"Retry-After": "1"}), Answer.json({"ok": 1}))
        started = time.monotonic()
        assert client(tmp_path).get_json(service.url + "/x") == {"ok": 1}
        assert time.monotonic() - started >= 0.9  # the header's second was honoured, not the 10 ms backoff
        assert service.count("/x") == 2


def test_disgenet_style_retry_header_is_honoured(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route(
            "/x",
            Answer.json({}, status=429, headers={"x-rate-limit-retry-after-seconds": "1"}),
            Answer.json([1]),
        )
        started = time.monotonic()
        assert client(tmp_path).get_json(service.url + "/x") == [1]
        assert time.monotonic() - started >= 0.9


def test_absurd_retry_after_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/x", Answer.json({}, status=429, headers={"Retry-After": "79200"}))
        started = time.monotonic()
        with pytest.raises(RateLimited, match="retry after 79200 s"):
            client(tmp_path, max_retry_after_s=30).get(service.url + "/x")
        assert time.monotonic() - started < 5


def test_500_then_success_and_post_is_retried(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route(
            "/g",
            Answer.text("boom", status=500),
            Answer.text("bad gw", status=502),
            Answer.json({"d": 2}),
            method="POST",
        )
        assert client(tmp_path).post_json(service.url + "/g", {"query": "{}"}) == {"d": 2}
        assert service.count("/g", "POST") == 3


def test_persistent_500_gives_a_clear_error(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/x", Answer.text("down", status=503))
        with pytest.raises(HttpError, match="HTTP 503"):
            client(tmp_path, retries=2).get(service.url + "/x")
        assert service.count("/x") == 3


def test_timeout_retries_then_reports(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/slow", Answer.json({}, delay_s=1.5))
        with pytest.raises(HttpError, match=r"no answer .* within 1 s"):
            client(tmp_path, timeout_s=(1.0, 1.0), retries=1).get(service.url + "/slow")
        assert service.count("/slow") == 2
        service.route("/once", Answer.json({}, delay_s=1.5), Answer.json({"fast": True}))
        assert client(tmp_path, timeout_s=(1.0, 1.0), retries=2).get_json(service.url + "/once") == {
            "fast": True
        }


def test_user_agent_names_the_project(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/x", Answer.json({}))
        client(tmp_path).get(service.url + "/x")
        assert service.requests[0].headers["User-Agent"] == USER_AGENT
        assert USER_AGENT.startswith("sae-genomics/")


def test_rate_limit_spaces_requests(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/x", Answer.json({}))
        http = client(tmp_path, min_interval_s=0.2)
        started = time.monotonic()
        for _ in range(4):
            http.get(service.url + "/x")
        assert time.monotonic() - started >= 0.6


def test_conditional_get_reuses_the_cached_file(tmp_path: Path) -> None:
    body = "a\tb\n" * 1000
    with FakeService() as service:
        service.route(
            "/bulk.tsv", Answer.text(body, headers={"ETag": '"v1"', "Last-Modified": "Mon, 02 Nov 2026"})
        )
        http = client(tmp_path)
        first = http.download(service.url + "/bulk.tsv", "bulk.tsv")
        second = http.download(service.url + "/bulk.tsv", "bulk.tsv")
        assert not first.from_cache and second.from_cache
        assert first.sha256 == second.sha256 and first.path.read_text() == body
        assert service.requests[1].headers.get("If-None-Match") == '"v1"'
        service.route("/bulk.tsv", Answer.text(body + "c\td\n", headers={"ETag": '"v2"'}))
        third = http.download(service.url + "/bulk.tsv", "bulk.tsv")
        assert not third.from_cache and third.sha256 != first.sha256 and third.etag == '"v2"'


def test_truncated_download_is_refused_and_the_cached_copy_kept(tmp_path: Path) -> None:
    body = "x" * 100_000
    with FakeService() as service:
        service.route("/bulk", Answer.text(body, headers={"ETag": '"v1"'}))
        http = client(tmp_path, retries=0)
        good = http.download(service.url + "/bulk", "bulk.txt")
        service.route("/bulk", Answer.text(body * 2, headers={"ETag": '"v2"'}, truncate_to=50_000))
        with pytest.raises(HttpError, match=r"truncated|broke off"):
            http.download(service.url + "/bulk", "bulk.txt")
        assert good.path.read_text() == body
        assert not list(good.path.parent.glob("*.part*"))


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/bulk", Answer.text("content"))
        with pytest.raises(HttpError, match="checksum mismatch"):
            client(tmp_path).download(service.url + "/bulk", "bulk.txt", expected_sha256="0" * 64)
        assert not (tmp_path / "cache" / "testsvc" / "bulk.txt").exists()


def test_malformed_json_is_a_clear_error(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/x", Answer.text("<html>maintenance</html>"))
        with pytest.raises(HttpError, match="not valid JSON"):
            client(tmp_path).get_json(service.url + "/x")


def test_secrets_never_reach_errors_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-live-7f3a9b2c4d"
    with FakeService() as service:
        service.route(f"/downloads/{key}/genemap2.txt", Answer.text("nope", status=500))
        http = client(tmp_path, secrets=[key], retries=2)
        with caplog.at_level(logging.DEBUG), pytest.raises(HttpError) as raised:
            http.get(f"{service.url}/downloads/{key}/genemap2.txt?apiKey={key}")
        assert key not in str(raised.value) and "***" in str(raised.value)
        # the library's exception (its text holds the URL) is neither the cause nor shown as context
        error = raised.value
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
        assert caplog.records, "urllib3 logs its retries"
        assert all(key not in record.getMessage() for record in caplog.records)
        service.route("/auth", Answer.json({"status": "UNAUTHORIZED"}, status=401))
        with pytest.raises(HttpError, match=r"access refused .*API key"):
            http.get(service.url + "/auth", headers={"Authorization": key})
