"""The HTTP layer against a local fake service: retries, Retry-After, timeouts, truncation, caching, secrets,
refused vs silent services, and the bound on one refresh's total time."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from sae_genomics_core.annotations.base import SourceConfig
from sae_genomics_core.annotations.errors import AnnotationError
from sae_genomics_core.annotations.http import (
    NO_ANSWER_RETRIES,
    USER_AGENT,
    HttpClient,
    HttpError,
    OutOfTime,
    RateLimited,
)
from sae_genomics_core.annotations.identifiers import GeneResolver
from sae_genomics_core.annotations.refresh import DEFAULT_MAX_REFRESH_S, max_refresh_s, refresh
from tests.fakes.http_service import Answer, FakeService, SilentServer, closed_port


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
        with (
            caplog.at_level(logging.DEBUG),
            caplog.at_level(logging.DEBUG, logger="urllib3"),
            pytest.raises(HttpError) as raised,
        ):
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


def test_refused_connection_says_refused_quickly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/bulk.txt"
    http = HttpClient("testsvc", tmp_path / "cache")  # the production retries and backoff
    started = time.monotonic()
    with pytest.raises(HttpError, match=r"testsvc: connection to .* refused") as raised:
        http.get(url)
    assert time.monotonic() - started < 5  # 2 retries, 1 s of backoff (was 5 retries, 15 s)
    assert "no answer" not in str(raised.value) and "external/sources.yaml" in str(raised.value)


def test_silent_service_says_no_answer(tmp_path: Path) -> None:
    with SilentServer() as silent:
        started = time.monotonic()
        with pytest.raises(HttpError, match=r"no answer from .* within 0\.5 s") as raised:
            client(tmp_path, timeout_s=(2.0, 0.5)).get(silent.url + "/x")
        assert "refused" not in str(raised.value)
        assert len(silent.accepted) == 1 + NO_ANSWER_RETRIES
        assert time.monotonic() - started < 0.5 * (1 + NO_ANSWER_RETRIES) + 3


def test_total_bound_stops_retries_of_a_silent_service(tmp_path: Path) -> None:
    with SilentServer() as silent:
        http = HttpClient("testsvc", tmp_path / "cache", max_total_s=2)  # read timeout 60 s, 5 retries
        started = time.monotonic()
        with pytest.raises(OutOfTime, match=r"testsvc: gave up after 2 s.*max_refresh_s.*timed out"):
            http.download(silent.url + "/bulk.txt", "bulk.txt")
        assert time.monotonic() - started < 2 + 2
        with pytest.raises(OutOfTime):  # the bound is spent: nothing more is attempted
            http.get(silent.url + "/x")


def test_total_bound_stops_a_trickling_download(tmp_path: Path) -> None:
    with FakeService() as service:
        # 200 KiB at 1 KiB per 50 ms: ~10 s, though no single read waits long enough to time out
        service.route("/bulk", Answer.text("x" * 200_000, trickle_s=0.05))
        http = client(tmp_path, timeout_s=(2.0, 2.0), max_total_s=1.5)
        started = time.monotonic()
        with pytest.raises(OutOfTime, match=r"at most 1\.5 s"):
            http.download(service.url + "/bulk", "bulk.txt")
        assert time.monotonic() - started < 1.5 + 2
        assert not list((tmp_path / "cache" / "testsvc").glob("bulk.txt*"))


def test_total_bound_refuses_a_retry_after_beyond_it(tmp_path: Path) -> None:
    with FakeService() as service:
        service.route("/x", Answer.json({}, status=503, headers={"Retry-After": "30"}))
        started = time.monotonic()
        with pytest.raises(OutOfTime, match="retry after 30 s"):
            client(tmp_path, max_total_s=5).get(service.url + "/x")
        assert time.monotonic() - started < 3


def test_refresh_is_bounded_by_max_refresh_s(tmp_path: Path, gene_resolver: GeneResolver) -> None:
    with SilentServer() as silent:
        config = SourceConfig("gencc", bulk_url=silent.url + "/gencc.csv", extra={"max_refresh_s": 2})
        started = time.monotonic()
        with pytest.raises(AnnotationError, match=r"gencc: gave up after 2 s"):
            refresh("gencc", config, gene_resolver, mode="live", cache_dir=tmp_path)
        assert time.monotonic() - started < 2 + 2
    assert max_refresh_s(SourceConfig("gencc")) == DEFAULT_MAX_REFRESH_S
    with pytest.raises(AnnotationError, match=r"max_refresh_s in external/sources\.yaml is 'soon'"):
        max_refresh_s(SourceConfig("gencc", extra={"max_refresh_s": "soon"}))
