"""Langfuse connector, without a server: retry math, models, error mapping, request shapes.

``httpx.MockTransport`` stands in for the server where only the client's own behaviour is
specified; everything that depends on how Langfuse behaves is in test_langfuse_connector.py.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from connectors.errors import (
    LangfuseAuthError,
    LangfuseBadRequestError,
    LangfuseCanaryTimeoutError,
    LangfuseConflictError,
    LangfuseError,
    LangfuseForbiddenError,
    LangfuseNotFoundError,
    LangfuseRateLimitedError,
    LangfuseServerError,
    LangfuseUnreachableError,
    LangfuseUnsupportedServerError,
)
from connectors.keypair import KeyPair
from connectors.langfuse import (
    ApiKeySummary,
    LangfuseAdminClient,
    LangfuseInstanceAdmin,
    LangfuseProjectClient,
    OrganizationProject,
    RetryPolicy,
)
from connectors.langfuse._errors import parse_retry_after, server_message
from connectors.langfuse._http import Backoff, forget_answered_hosts
from devstack.net import free_port
from tests.fakes import FakeClock

HOST = "http://langfuse.test"
ORG_PK = "pk-lf-org-0000"
ORG_SK = SecretStr("sk-lf-org-secret-DO-NOT-LEAK-1234")
PROJECT = "proj-1"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.fixture(autouse=True)
def never_contacted() -> None:
    """Each test starts with no host having answered in this process (connectors.langfuse._http)."""
    forget_answered_hosts()


def admin(handler: Handler, clock: FakeClock, retry: RetryPolicy | None = None) -> LangfuseAdminClient:
    return LangfuseAdminClient(
        HOST,
        ORG_PK,
        ORG_SK,
        retry=retry,
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
    )


def project_client(handler: Handler, clock: FakeClock, pair: KeyPair) -> LangfuseProjectClient:
    return LangfuseProjectClient(HOST, pair, transport=httpx.MockTransport(handler), sleep=clock.sleep, clock=clock)


def key_json(pair: KeyPair, key_id: str = "key-1", **extra: Any) -> dict[str, Any]:
    return {
        "id": key_id,
        "createdAt": "2026-08-22T08:00:00.000Z",
        "expiresAt": None,
        "lastUsedAt": None,
        "note": "rotation",
        "publicKey": pair.public_key,
        "displaySecretKey": pair.display_secret_key,
        **extra,
    }


def all_text(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# --- retry policy -------------------------------------------------------------------------------


def test_backoff_doubles_from_base_and_caps_at_max_delay() -> None:
    policy = RetryPolicy()
    assert [policy.backoff_delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_retry_after_replaces_backoff_and_is_capped() -> None:
    policy = RetryPolicy(retry_after_cap_s=60)
    assert policy.backoff_delay(1, retry_after_s=12) == 12
    assert policy.backoff_delay(1, retry_after_s=0) == 0
    assert policy.backoff_delay(4, retry_after_s=3600) == 60


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValidationError):
        RetryPolicy(base_delay_s=5, max_delay_s=1)


def test_backoff_stops_at_max_attempts(clock: FakeClock) -> None:
    backoff = Backoff(RetryPolicy(max_attempts=3, max_total_s=1000), clock)
    assert backoff.next_delay() == 0.5
    assert backoff.next_delay() == 1.0
    assert backoff.next_delay() is None


def test_backoff_never_sleeps_past_max_total(clock: FakeClock) -> None:
    backoff = Backoff(RetryPolicy(max_attempts=100, base_delay_s=1, max_delay_s=1, max_total_s=2.5), clock)
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        clock.sleep(delay)
    assert delays == [1, 1]
    assert backoff.next_delay(retry_after_s=30) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("12", 12.0), ("0", 0.0), (" 3 ", 3.0), ("1.5", 1.5), ("-4", 0.0), (None, None), ("soon", None)],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 25 <= seconds <= 31


def test_x_ratelimit_reset_style_js_date_is_not_a_retry_after() -> None:
    assert parse_retry_after("Sat Aug 22 2026 08:31:00 GMT+0000 (Coordinated Universal Time)") is None


# --- models -------------------------------------------------------------------------------------


def test_api_key_summary_reads_camel_case_and_ignores_extra_fields() -> None:
    pair = KeyPair.generate()
    key = ApiKeySummary.model_validate(key_json(pair, permissions=["full"], secretKey="sk-lf-x"))
    assert key.public_key == pair.public_key
    assert key.created_at == datetime(2026, 8, 22, 8, tzinfo=UTC)
    assert key.expires_at is None and key.last_used_at is None
    assert "sk-lf-x" not in repr(key)
    assert not hasattr(key, "secret_key")


def test_api_key_summary_tolerates_missing_optional_fields() -> None:
    key = ApiKeySummary.model_validate(
        {
            "id": "k",
            "createdAt": "2026-08-22T08:00:00Z",
            "publicKey": "pk-lf-1",
            "displaySecretKey": "sk-lf-...1",
        }
    )
    assert key.note is None


def test_organization_project_accepts_snake_and_camel() -> None:
    project = OrganizationProject.model_validate(
        {"id": "p", "name": "n", "metadata": None, "createdAt": "2026-08-22T08:00:00Z", "updatedAt": None}
    )
    assert project.created_at is not None and project.updated_at is None
    assert OrganizationProject(id="p", name="n").metadata is None


# --- error mapping ------------------------------------------------------------------------------


def respond(status: int, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("status", "body", "error", "must_contain"),
    [
        (
            401,
            {"message": "Invalid credentials. Confirm that you've configured the correct host."},
            LangfuseAuthError,
            ["langfuse.test", "organization key", ORG_PK, "Invalid credentials"],
        ),
        (
            403,
            {"message": "Invalid API key. Organization-scoped API key required for this operation."},
            LangfuseForbiddenError,
            ["Organization-scoped API key required", "403"],
        ),
        (
            403,
            {"error": "This feature is not available on your current plan."},
            LangfuseForbiddenError,
            ["not available on your current plan", "admin API"],
        ),
        (
            404,
            {"message": "Project not found or you don't have access to it"},
            LangfuseNotFoundError,
            [f"Project {PROJECT} not found", "langfuse.test"],
        ),
        (400, {"message": "Invalid project ID"}, LangfuseBadRequestError, ["Invalid project ID"]),
        (500, {"message": "Internal server error"}, LangfuseServerError, ["500", "Internal server error"]),
        (418, {"message": "teapot"}, LangfuseError, ["418", "teapot"]),
    ],
)
def test_status_maps_to_error_class_with_actionable_one_line_message(
    clock: FakeClock, status: int, body: object, error: type[LangfuseError], must_contain: list[str]
) -> None:
    with admin(respond(status, body), clock) as client, pytest.raises(error) as caught:
        client.list_api_keys(PROJECT)
    assert type(caught.value) is error
    message = str(caught.value)
    assert "\n" not in message
    for fragment in must_contain:
        assert fragment in message
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


def test_server_message_prefers_message_then_error_then_reason() -> None:
    both = httpx.Response(401, json={"error": "UnauthorizedError", "message": "Invalid credentials."})
    assert server_message(both) == "Invalid credentials."
    assert server_message(httpx.Response(403, json={"error": "plan"})) == "plan"
    assert server_message(httpx.Response(502, text="<html>bad gateway</html>")) == "Bad Gateway"


def test_server_echoing_a_secret_is_redacted(clock: FakeClock) -> None:
    body = {"message": f"bad secret {ORG_SK.get_secret_value()}"}
    with admin(respond(400, body), clock) as client, pytest.raises(LangfuseBadRequestError) as caught:
        client.list_projects()
    assert ORG_SK.get_secret_value() not in all_text(caught.value)
    assert "[redacted]" in str(caught.value)


def test_redirect_tells_the_user_to_fix_the_host(clock: FakeClock) -> None:
    handler = respond(301, None, {"location": "https://langfuse.test/api/public/organizations/projects"})
    with admin(handler, clock) as client, pytest.raises(LangfuseError, match="configure the final URL"):
        client.list_projects()


def test_unexpected_body_names_fields_not_values(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    body = {"id": "k", "publicKey": pair.public_key, "secretKey": pair.secret_key.get_secret_value()}
    with admin(respond(201, body), clock) as client, pytest.raises(LangfuseError) as caught:
        client.create_api_key(PROJECT, pair, "n")
    assert "createdAt" in str(caught.value) or "created_at" in str(caught.value)
    assert pair.secret_key.get_secret_value() not in all_text(caught.value)


def test_non_json_body_is_a_clear_error(clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>login</html>")

    with admin(handler, clock) as client, pytest.raises(LangfuseError, match="non-JSON"):
        client.list_projects()


@pytest.mark.parametrize("host", ["langfuse.test", "ftp://x", "http://u:p@langfuse.test", ""])
def test_host_must_be_a_plain_http_url(host: str) -> None:
    with pytest.raises(ValueError) as caught:
        LangfuseAdminClient(host, ORG_PK, ORG_SK)
    assert "p@" not in str(caught.value)


def test_host_path_prefix_is_kept(clock: FakeClock) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"projects": []})

    client = LangfuseAdminClient(
        "https://example.test/langfuse/", ORG_PK, ORG_SK, transport=httpx.MockTransport(handler)
    )
    assert client.list_projects() == []
    assert seen == ["/langfuse/api/public/organizations/projects"]


# --- retries ------------------------------------------------------------------------------------


class Script:
    """Answers requests from a list of responses (the last one repeats) and records them."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_429_honours_retry_after_not_x_ratelimit_reset(clock: FakeClock) -> None:
    limited = httpx.Response(
        429,
        json={"message": "Rate limit exceeded", "code": "rate_limited"},
        headers={"Retry-After": "7", "X-RateLimit-Reset": "Sat Aug 22 2026 08:31:00 GMT+0000 (UTC)"},
    )
    script = Script(limited, httpx.Response(200, json={"projects": []}))
    with admin(script, clock) as client:
        assert client.list_projects() == []
    assert clock.sleeps == [7.0]


def test_429_exhausted_raises_rate_limited_with_retry_after(clock: FakeClock) -> None:
    limited = httpx.Response(429, json={"message": "Rate limit exceeded"}, headers={"Retry-After": "20"})
    with admin(Script(limited), clock) as client, pytest.raises(LangfuseRateLimitedError) as caught:
        client.list_projects()
    assert caught.value.retry_after_s == 20
    assert clock.sleeps == [20.0]  # a second 20 s pause would pass max_total_s=30
    assert "retry after 20s" in str(caught.value)


def test_5xx_storm_is_bounded_by_max_attempts(clock: FakeClock) -> None:
    script = Script(httpx.Response(503, json={"message": "Service Unavailable"}))
    retry = RetryPolicy(max_attempts=4, max_total_s=1000)
    with admin(script, clock, retry) as client, pytest.raises(LangfuseServerError, match="503"):
        client.list_api_keys(PROJECT)
    assert len(script.requests) == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_5xx_storm_is_bounded_by_max_total(clock: FakeClock) -> None:
    script = Script(httpx.Response(502, text="bad gateway"))
    retry = RetryPolicy(max_attempts=100, base_delay_s=1, max_delay_s=4, max_total_s=10)
    with admin(script, clock, retry) as client, pytest.raises(LangfuseServerError):
        client.list_api_keys(PROJECT)
    assert sum(clock.sleeps) <= 10
    assert clock.sleeps == [1, 2, 4]


def test_a_host_that_answered_before_and_now_refuses_is_retried_then_unreachable(clock: FakeClock) -> None:
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    script = Script(httpx.Response(200, json={"projects": []}), refused)  # then restarting
    client = admin(script, clock, RetryPolicy(max_attempts=3))
    with client, pytest.raises(LangfuseUnreachableError) as caught:
        assert client.list_projects() == []
        client.list_projects()
    assert len(script.requests) == 1 + 3
    assert "langfuse.test" in str(caught.value) and "Connection refused" in str(caught.value)
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_a_host_that_never_answered_and_refuses_fails_at_the_first_try(clock: FakeClock) -> None:
    script = Script(httpx.ConnectError("[Errno 111] Connection refused"))
    client = admin(script, clock)
    with client, pytest.raises(LangfuseUnreachableError, match="Connection refused"):
        client.list_projects()
    assert len(script.requests) == 1 and clock.sleeps == []


def test_a_connect_timeout_is_retried_even_before_the_host_answered(clock: FakeClock) -> None:
    script = Script(httpx.ConnectTimeout("timed out"))
    with admin(script, clock, RetryPolicy(max_attempts=3)) as client, pytest.raises(LangfuseUnreachableError):
        client.list_projects()
    assert len(script.requests) == 3


def test_retries_are_logged_at_debug_level_only(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="connectors.langfuse")
    script = Script(httpx.Response(503, json={"message": "x"}), httpx.Response(200, json={"projects": []}))
    with admin(script, clock) as client:
        assert client.list_projects() == []
    (retry,) = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retry.levelno == logging.DEBUG
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_400_and_401_are_not_retried(clock: FakeClock) -> None:
    for status in (400, 401, 403, 404):
        script = Script(httpx.Response(status, json={"message": "no"}))
        with admin(script, clock) as client, pytest.raises(LangfuseError):
            client.list_api_keys(PROJECT)
        assert len(script.requests) == 1


def test_a_real_socket_nothing_listens_on_fails_at_the_first_try() -> None:
    port = free_port()  # nothing listens there: connections are refused
    clock = FakeClock(start=1000.0)
    client = LangfuseAdminClient(
        f"http://127.0.0.1:{port}", ORG_PK, ORG_SK, timeout_s=1, sleep=clock.sleep, clock=clock
    )
    with client, pytest.raises(LangfuseUnreachableError, match=f"127.0.0.1:{port}"):
        client.health()
    assert clock.sleeps == []


# --- create -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201])
def test_create_sends_exactly_note_and_pair_and_accepts_200_or_201(clock: FakeClock, status: int) -> None:
    pair = KeyPair.generate()
    script = Script(httpx.Response(status, json={**key_json(pair), "secretKey": pair.secret_key.get_secret_value()}))
    with admin(script, clock) as client:
        created = client.create_api_key(PROJECT, pair, "rotation 2026-08")
    assert created.public_key == pair.public_key and created.id == "key-1"
    (request,) = script.requests
    assert request.method == "POST"
    assert request.url.path == f"/api/public/projects/{PROJECT}/apiKeys"
    sent = json.loads(request.content)
    assert sent == {
        "note": "rotation 2026-08",
        "publicKey": pair.public_key,
        "secretKey": pair.secret_key.get_secret_value(),
    }
    assert b"null" not in request.content


def test_create_after_5xx_lists_first_and_returns_the_landed_key(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if request.method == "POST":
            return httpx.Response(503, json={"message": "Service Unavailable"})
        return httpx.Response(200, json={"apiKeys": [key_json(pair)]})

    with admin(handler, clock) as client:
        assert client.create_api_key(PROJECT, pair, "n").id == "key-1"
    assert calls == ["POST", "GET"]


def test_create_after_timeout_retries_only_when_absent(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.method == "GET":
            return httpx.Response(200, json={"apiKeys": []})
        posts += 1
        if posts == 1:
            raise httpx.ReadTimeout("timed out")
        return httpx.Response(201, json=key_json(pair))

    with admin(handler, clock) as client:
        assert client.create_api_key(PROJECT, pair, "n").public_key == pair.public_key
    assert posts == 2


def test_create_409_with_our_public_key_present_is_success(clock: FakeClock) -> None:
    pair = KeyPair.generate()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                409, json={"message": "API key with the provided publicKey or secretKey already exists"}
            )
        return httpx.Response(200, json={"apiKeys": [key_json(pair, "key-9")]})

    with admin(handler, clock) as client:
        assert client.create_api_key(PROJECT, pair, "n").id == "key-9"


def test_create_409_without_our_key_is_a_conflict(clock: FakeClock) -> None:
    pair = KeyPair.generate()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                409, json={"message": "API key with the provided publicKey or secretKey already exists"}
            )
        return httpx.Response(200, json={"apiKeys": []})

    with admin(handler, clock) as client, pytest.raises(LangfuseConflictError, match="secret collides"):
        client.create_api_key(PROJECT, pair, "n")


def test_create_finding_our_public_key_with_another_secret_is_a_conflict(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    other = key_json(pair, displaySecretKey="sk-lf-...zzzz")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(409, json={"message": "exists"})
        return httpx.Response(200, json={"apiKeys": [other]})

    with admin(handler, clock) as client, pytest.raises(LangfuseConflictError, match="different secret"):
        client.create_api_key(PROJECT, pair, "n")


def test_create_429_retries_without_listing(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    script = Script(
        httpx.Response(429, json={"message": "Rate limit exceeded"}, headers={"Retry-After": "3"}),
        httpx.Response(201, json=key_json(pair)),
    )
    with admin(script, clock) as client:
        client.create_api_key(PROJECT, pair, "n")
    assert [r.method for r in script.requests] == ["POST", "POST"]
    assert clock.sleeps == [3.0]


def test_create_400_is_not_retried_and_quotes_the_server(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    script = Script(httpx.Response(400, json={"message": "publicKey must start with 'pk-lf-'"}))
    with admin(script, clock) as client, pytest.raises(LangfuseBadRequestError, match="must start with"):
        client.create_api_key(PROJECT, pair, "n")
    assert len(script.requests) == 1


def test_create_on_server_ignoring_predefined_keys_deletes_the_generated_key(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    generated = KeyPair.generate()
    deleted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = {**key_json(generated, "gen-1"), "secretKey": generated.secret_key.get_secret_value()}
            return httpx.Response(201, json=body)
        deleted.append(request.url.path)
        return httpx.Response(200, json={"success": True})

    with admin(handler, clock) as client, pytest.raises(LangfuseUnsupportedServerError) as caught:
        client.create_api_key(PROJECT, pair, "n")
    assert deleted == [f"/api/public/projects/{PROJECT}/apiKeys/gen-1"]
    assert "v3.121.0" in str(caught.value)
    assert generated.secret_key.get_secret_value() not in all_text(caught.value)
    assert pair.secret_key.get_secret_value() not in all_text(caught.value)


# --- delete -------------------------------------------------------------------------------------


def test_delete_404_key_not_found_is_false_but_project_404_raises(clock: FakeClock) -> None:
    with admin(respond(404, {"message": "API key not found"}), clock) as client:
        assert client.delete_api_key(PROJECT, "k") is False
    body = {"message": "Project not found or you don't have access to it"}
    with admin(respond(404, body), clock) as client, pytest.raises(LangfuseNotFoundError, match=PROJECT):
        client.delete_api_key(PROJECT, "k")


def test_delete_whose_first_answer_was_lost_reports_deleted(clock: FakeClock) -> None:
    script = Script(
        httpx.Response(503, json={"message": "x"}), httpx.Response(404, json={"message": "API key not found"})
    )
    with admin(script, clock) as client:
        assert client.delete_api_key(PROJECT, "k") is True


# --- instance admin -----------------------------------------------------------------------------


def test_invalidate_all_sends_bearer_and_action(clock: FakeClock) -> None:
    script = Script(httpx.Response(200, json={"success": True}))
    token = SecretStr("admin-token-DO-NOT-LEAK")
    client = LangfuseInstanceAdmin(HOST, token, transport=httpx.MockTransport(script))
    client.invalidate_all_cached_keys()
    (request,) = script.requests
    assert request.url.path == "/api/admin/api-keys"
    assert json.loads(request.content) == {"action": "invalidate-all"}
    assert request.headers["authorization"] == "Bearer admin-token-DO-NOT-LEAK"
    assert "DO-NOT-LEAK" not in repr(client)


def test_invalidate_all_rejected_token_is_auth_error_without_the_token() -> None:
    token = SecretStr("admin-token-DO-NOT-LEAK")
    client = LangfuseInstanceAdmin(
        HOST,
        token,
        transport=httpx.MockTransport(respond(401, {"error": "Unauthorized: Invalid admin API key"})),
    )
    with pytest.raises(LangfuseAuthError, match="ADMIN_API_KEY") as caught:
        client.invalidate_all_cached_keys()
    assert "DO-NOT-LEAK" not in all_text(caught.value)


# --- project client -----------------------------------------------------------------------------


def test_probe_sends_one_request_on_401(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    script = Script(httpx.Response(401, json={"message": "Invalid credentials."}))
    with project_client(script, clock, pair) as client:
        result = client.probe()
    assert (result.accepted, result.status_code, result.project_id) == (False, 401, None)
    assert len(script.requests) == 1


def test_probe_accepted_reports_project(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    body = {"data": [{"id": "p1", "name": "demo", "organization": {"id": "o1", "name": "org"}, "metadata": {}}]}
    with project_client(respond(200, body), clock, pair) as client:
        assert client.probe().model_dump() == {"accepted": True, "status_code": 200, "project_id": "p1"}
        info = client.auth_check()
    assert (info.id, info.name, info.organization_id) == ("p1", "demo", "o1")


def test_auth_check_with_org_key_is_forbidden(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    body = {"message": "Invalid API key. Are you using an organization key?"}
    client = project_client(respond(403, body), clock, pair)
    with client, pytest.raises(LangfuseForbiddenError, match="organization key"):
        client.auth_check()


def test_canary_request_shape(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    script = Script(httpx.Response(200, text="not json at all"))
    with project_client(script, clock, pair) as client:
        trace_id = client.send_canary(attributes={"rotation.id": "r-1"})
    (request,) = script.requests
    assert request.url.path == "/api/public/otel/v1/traces"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    (resource,) = json.loads(request.content)["resourceSpans"]
    (scope,) = resource["scopeSpans"]
    (span,) = scope["spans"]
    assert span["traceId"] == trace_id and len(trace_id) == 32 and int(trace_id, 16)
    assert len(span["spanId"]) == 16 and int(span["spanId"], 16)
    attributes = {a["key"]: a["value"]["stringValue"] for a in span["attributes"]}
    assert attributes == {"langfuse.trace.name": "rotation-canary", "rotation.id": "r-1"}
    assert int(span["endTimeUnixNano"]) > int(span["startTimeUnixNano"])


def test_canary_trace_id_is_validated(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    with project_client(respond(200, {}), clock, pair) as client:
        assert client.send_canary("0123456789ABCDEF0123456789abcdef") == "0123456789abcdef0123456789abcdef"
        for bad in ("xyz", "0" * 32, "a" * 31):
            with pytest.raises(ValueError):
                client.send_canary(bad)


def test_wait_for_canary_times_out_with_doubling_polls(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    script = Script(httpx.Response(200, json={"data": [], "meta": {}}))
    with project_client(script, clock, pair) as client, pytest.raises(LangfuseCanaryTimeoutError) as caught:
        client.wait_for_canary("ab" * 16, timeout_s=5, initial_poll_s=0.5, max_poll_s=2)
    assert clock.sleeps == [0.5, 1.0, 2.0, 1.5]
    assert caught.value.trace_id == "ab" * 16
    assert caught.value.waited_s == pytest.approx(5.0)
    assert len(script.requests) == 5


def test_wait_for_canary_returns_elapsed(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    trace = "cd" * 16
    script = Script(
        httpx.Response(200, json={"data": []}),
        httpx.Response(200, json={"data": []}),
        httpx.Response(200, json={"data": [{"id": "s", "traceId": trace}]}),
    )
    with project_client(script, clock, pair) as client:
        assert client.wait_for_canary(trace, timeout_s=10) == pytest.approx(0.6)


def test_repr_and_logs_hold_no_secret(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pair = KeyPair.generate()
    secret = pair.secret_key.get_secret_value()
    posts = Script(httpx.Response(503, json={"message": "x"}), httpx.Response(201, json=key_json(pair)))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"apiKeys": []})
        return posts(request)

    with admin(handler, clock) as admin_client, project_client(handler, clock, pair) as project:
        assert "sk-lf" not in repr(admin_client) + repr(project)
        admin_client.create_api_key(PROJECT, pair, "n")
    assert len(posts.requests) == 2
    assert caplog.records  # the retry was logged
    assert secret not in caplog.text and ORG_SK.get_secret_value() not in caplog.text


def test_wait_for_canary_retries_a_429_inside_its_budget(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    trace = "ef" * 16
    script = Script(
        httpx.Response(429, json={"message": "Rate limit exceeded"}, headers={"Retry-After": "1"}),
        httpx.Response(200, json={"data": [{"id": "s", "traceId": trace}]}),
    )
    with project_client(script, clock, pair) as client:
        assert client.wait_for_canary(trace, timeout_s=5) == pytest.approx(1.0)


def test_wait_for_canary_does_not_retry_past_its_timeout(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    script = Script(httpx.Response(429, json={"message": "Rate limit exceeded"}, headers={"Retry-After": "9"}))
    with project_client(script, clock, pair) as client, pytest.raises(LangfuseRateLimitedError):
        client.wait_for_canary("ef" * 16, timeout_s=5)
    assert clock.sleeps == []


def test_canary_falls_back_to_traces_once_on_v2_404(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    trace = "12" * 16
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/api/public/v2/observations":
            return httpx.Response(404, json={"message": "The observations v2 API is only available in v4"})
        if len(paths) < 3:
            return httpx.Response(404, json={"message": f"Trace {trace} not found within authorized project"})
        return httpx.Response(200, json={"id": trace})

    with project_client(handler, clock, pair) as client:
        assert client.canary_visible(trace) is False
        assert client.canary_visible(trace) is True
    assert paths == ["/api/public/v2/observations", f"/api/public/traces/{trace}", f"/api/public/traces/{trace}"]


def test_canary_on_events_only_server_without_v2_is_unsupported(clock: FakeClock) -> None:
    pair = KeyPair.generate()
    body = {"message": "This endpoint is not available on deployments running in Langfuse v4 events_only mode."}
    with project_client(respond(404, body), clock, pair) as client, pytest.raises(LangfuseUnsupportedServerError):
        client.canary_visible("12" * 16)


@pytest.mark.parametrize("display", ["sk-lf-...{tail}", "sk-l...{tail}", "hidden"])
def test_recreate_tolerates_other_display_formats_of_the_same_secret(clock: FakeClock, display: str) -> None:
    pair = KeyPair.generate()
    shown = display.format(tail=pair.secret_key.get_secret_value()[-6:])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(409, json={"message": "exists"})
        return httpx.Response(200, json={"apiKeys": [key_json(pair, displaySecretKey=shown)]})

    with admin(handler, clock) as client:
        assert client.create_api_key(PROJECT, pair, "n").public_key == pair.public_key
