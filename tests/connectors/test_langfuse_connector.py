"""Langfuse connector against the Langfuse API simulator (a real process on 127.0.0.1).

Each test gets a freshly reset simulator through the ``sim`` fixture. Retry pauses go through
an injected sleep so storms of injected faults run in milliseconds. Where the simulator's time
matters too (visibility delays, rate-limit windows), ``sim_clock`` moves the simulator's clock
along with the client's: no test here waits on the wall clock for a delay or a window.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from connectors.errors import (
    LangfuseAnswerTooLargeError,
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
    LangfuseAdminClient,
    LangfuseInstanceAdmin,
    LangfuseProjectClient,
    RetryPolicy,
)
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class SimClock(FakeClock):
    """A fake clock the simulator shares: the client's sleeps (retry pauses, canary polls) move
    the simulator's clock (visibility delays, rate-limit windows) by as much, at once."""

    def __init__(self, sim: Any) -> None:
        super().__init__()
        self._sim = sim

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self._sim.control.advance_clock(seconds)


@pytest.fixture
def sim_clock(sim: Any) -> SimClock:
    return SimClock(sim)


@pytest.fixture
def admin(sim: Any, clock: FakeClock) -> Iterator[LangfuseAdminClient]:
    with LangfuseAdminClient(
        sim.url, sim.org_public_key, SecretStr(sim.org_secret_key), sleep=clock.sleep, clock=clock
    ) as client:
        yield client


def project_pair(project: Any) -> KeyPair:
    return KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key))


def project_client(sim: Any, pair: KeyPair, clock: FakeClock | None = None) -> LangfuseProjectClient:
    if clock is None:
        return LangfuseProjectClient(sim.url, pair)
    return LangfuseProjectClient(sim.url, pair, sleep=clock.sleep, clock=clock)


def all_keys(sim: Any) -> list[dict[str, Any]]:
    """Every key row the simulator holds (its control view: no secret material)."""
    return list(sim.keys())


def keys_with(sim: Any, public_key: str) -> list[dict[str, Any]]:
    return [key for key in all_keys(sim) if key["publicKey"] == public_key]


def log_mark(sim: Any) -> int:
    """The simulator's request-log position; pass it to ``logged_since``."""
    return int(sim.requests()["next"])


def logged_since(sim: Any, mark: int) -> list[dict[str, Any]]:
    """Requests the simulator served after ``mark``: ``{seq, method, path, status, public_key}``."""
    return list(sim.requests(since=mark)["requests"])


def keys_path(project_id: str) -> str:
    return f"/api/public/projects/{project_id}/apiKeys"


def every_text(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# --- health and reads ---------------------------------------------------------------------------


def test_health_reports_status_and_version(sim: Any, admin: LangfuseAdminClient) -> None:
    health = admin.health()
    assert health.status == "OK"
    assert health.version == "4.16.0"


@pytest.mark.parametrize(("mode", "quoted"), [("db_down", "Database not available"), ("fail", "Health check failed")])
def test_unhealthy_server_is_a_server_error(
    sim: Any, admin: LangfuseAdminClient, clock: FakeClock, mode: str, quoted: str
) -> None:
    sim.configure(health=mode)
    with pytest.raises(LangfuseServerError, match=f"503: {quoted}"):
        admin.health()
    assert len(clock.sleeps) == RetryPolicy().max_attempts - 1


def test_list_projects_and_keys(sim: Any, admin: LangfuseAdminClient) -> None:
    projects = admin.list_projects()
    assert sorted(p.id for p in projects) == sorted(p.id for p in sim.projects)
    first = sim.projects[0]
    keys = admin.list_api_keys(first.id)
    assert [k.public_key for k in keys] == [first.public_key]
    assert keys[0].last_used_at is None
    assert keys[0].display_secret_key == project_pair(first).display_secret_key
    found = admin.find_api_key(first.id, first.public_key)
    assert found is not None and found.id == keys[0].id
    assert admin.find_api_key(first.id, "pk-lf-absent") is None


# --- error paths --------------------------------------------------------------------------------


def test_invalid_org_key_names_host_and_org_key(sim: Any) -> None:
    client = LangfuseAdminClient(sim.url, sim.org_public_key, SecretStr("sk-lf-wrong-secret"))
    with client, pytest.raises(LangfuseAuthError) as caught:
        client.list_projects()
    message = str(caught.value)
    assert sim.url.rstrip("/") in message
    assert "organization key" in message and sim.org_public_key in message
    assert "sk-lf-wrong-secret" not in every_text(caught.value)


def test_project_key_used_for_admin_is_forbidden_quoting_message(sim: Any) -> None:
    project = sim.projects[0]
    client = LangfuseAdminClient(sim.url, project.public_key, SecretStr(project.secret_key))
    with client, pytest.raises(LangfuseForbiddenError) as caught:
        client.list_api_keys(project.id)
    assert "Organization-scoped API key required" in str(caught.value)
    assert project.secret_key not in every_text(caught.value)


def test_plan_without_admin_api_is_forbidden_quoting_error_key(sim: Any, admin: LangfuseAdminClient) -> None:
    sim.configure(admin_api_entitlement=False)
    with pytest.raises(LangfuseForbiddenError, match="not available on your current plan"):
        admin.list_api_keys(sim.projects[0].id)
    with pytest.raises(LangfuseForbiddenError, match="not available on your current plan"):
        admin.list_projects()


def test_unknown_project_is_not_found_naming_it(sim: Any, admin: LangfuseAdminClient) -> None:
    with pytest.raises(LangfuseNotFoundError, match="Project cm-no-such-project not found"):
        admin.list_api_keys("cm-no-such-project")
    with pytest.raises(LangfuseNotFoundError, match="cm-no-such-project"):
        admin.create_api_key("cm-no-such-project", KeyPair.generate(), "n")


def test_secret_colliding_with_another_key_is_a_conflict(sim: Any, admin: LangfuseAdminClient) -> None:
    project = sim.projects[0]
    colliding = KeyPair(public_key=KeyPair.generate().public_key, secret_key=SecretStr(project.secret_key))
    with pytest.raises(LangfuseConflictError, match="409") as caught:
        admin.create_api_key(project.id, colliding, "collide")
    assert project.secret_key not in every_text(caught.value)
    assert keys_with(sim, colliding.public_key) == []


def test_bad_prefix_is_a_bad_request_quoting_the_server(sim: Any, admin: LangfuseAdminClient) -> None:
    bad = KeyPair.model_construct(public_key="pk-xx-1", secret_key=SecretStr("sk-lf-1234567890"))
    with pytest.raises(LangfuseBadRequestError, match="publicKey must start with 'pk-lf-'"):
        admin.create_api_key(sim.projects[0].id, bad, "n")


def test_server_rejects_null_and_the_client_never_sends_it(sim: Any, admin: LangfuseAdminClient) -> None:
    project = sim.projects[0]
    raw = httpx.post(
        f"{sim.url.rstrip('/')}{keys_path(project.id)}",
        json={"note": None},
        auth=(sim.org_public_key, sim.org_secret_key),
    )
    assert raw.status_code == 400
    pair = KeyPair.generate()
    created = admin.create_api_key(project.id, pair, "")
    assert created.public_key == pair.public_key


# --- retries ------------------------------------------------------------------------------------


def test_injected_429s_are_retried_after_retry_after(sim: Any, admin: LangfuseAdminClient, clock: FakeClock) -> None:
    project = sim.projects[0]
    sim.inject_fault(keys_path(project.id), status=429, count=2, method="GET", retry_after=3)
    assert [k.public_key for k in admin.list_api_keys(project.id)] == [project.public_key]
    assert clock.sleeps == [3.0, 3.0]


def test_429_storm_gives_up_within_the_budget(sim: Any, clock: FakeClock) -> None:
    project = sim.projects[0]
    sim.inject_fault(keys_path(project.id), status=429, count=50, method="GET", retry_after=10)
    client = LangfuseAdminClient(
        sim.url, sim.org_public_key, SecretStr(sim.org_secret_key), sleep=clock.sleep, clock=clock
    )
    with client, pytest.raises(LangfuseRateLimitedError) as caught:
        client.list_api_keys(project.id)
    assert caught.value.retry_after_s == 10
    assert clock.sleeps == [10.0, 10.0, 10.0]
    assert clock.now <= RetryPolicy().max_total_s


def test_real_rate_limiter_is_honoured(sim: Any, sim_clock: SimClock) -> None:
    sim.configure(rate_limits={"public-api": [2, 10]})
    project = sim.projects[0]
    before = log_mark(sim)
    with LangfuseAdminClient(
        sim.url, sim.org_public_key, SecretStr(sim.org_secret_key), sleep=sim_clock.sleep, clock=sim_clock
    ) as client:
        for _ in range(4):
            assert client.find_api_key(project.id, project.public_key) is not None
    statuses = [r["status"] for r in logged_since(sim, before)]
    # Two calls fit the window; the third got a 429, waited out its Retry-After and went through
    # in the next window with the fourth.
    assert statuses == [200, 200, 429, 200, 200]
    (waited,) = sim_clock.sleeps
    assert 9 <= waited <= 10, "the client waited as long as Retry-After said: until the 10 s window ended"


def test_503_storm_is_bounded_in_attempts(sim: Any, clock: FakeClock) -> None:
    project = sim.projects[0]
    sim.inject_fault(keys_path(project.id), status=503, count=100, method="GET")
    client = LangfuseAdminClient(
        sim.url,
        sim.org_public_key,
        SecretStr(sim.org_secret_key),
        retry=RetryPolicy(max_attempts=3, max_total_s=100),
        sleep=clock.sleep,
        clock=clock,
    )
    before = log_mark(sim)
    with client, pytest.raises(LangfuseServerError, match="503"):
        client.list_api_keys(project.id)
    assert len(logged_since(sim, before)) == 3
    assert clock.sleeps == [0.5, 1.0]


def test_503_storm_is_bounded_in_time(sim: Any, clock: FakeClock) -> None:
    project = sim.projects[0]
    sim.inject_fault(keys_path(project.id), status=503, count=100, method="GET")
    client = LangfuseAdminClient(
        sim.url,
        sim.org_public_key,
        SecretStr(sim.org_secret_key),
        retry=RetryPolicy(max_attempts=100, base_delay_s=2, max_delay_s=2, max_total_s=7),
        sleep=clock.sleep,
        clock=clock,
    )
    with client, pytest.raises(LangfuseServerError):
        client.list_api_keys(project.id)
    assert clock.sleeps == [2.0, 2.0, 2.0]


def test_dropped_connection_on_read_is_retried(sim: Any, admin: LangfuseAdminClient, clock: FakeClock) -> None:
    sim.inject_fault("/api/public/organizations/projects", status=503, count=1, drop=True)
    assert len(admin.list_projects()) == 2
    assert clock.sleeps == [0.5]


def test_unreachable_host(clock: FakeClock) -> None:
    client = LangfuseAdminClient(
        "http://127.0.0.1:9", "pk-lf-x", SecretStr("sk-lf-y"), timeout_s=1, sleep=clock.sleep, clock=clock
    )
    with client, pytest.raises(LangfuseUnreachableError, match=r"127\.0\.0\.1:9"):
        client.list_projects()
    assert clock.sleeps == [], "nothing ever answered there: no retries"


@pytest.mark.slow  # lists thousands of keys
def test_a_key_list_larger_than_the_body_cap_says_so_and_names_the_endpoint(
    sim: Any, admin: LangfuseAdminClient, clock: FakeClock
) -> None:
    project = sim.projects[0]
    sim.control.add_keys(project.id, 100_000)  # about 25 MB of JSON

    with pytest.raises(LangfuseAnswerTooLargeError) as raised:
        admin.list_api_keys(project.id)

    message = str(raised.value)
    assert "unreachable" not in message and not raised.value.retryable
    assert message.startswith(
        f"Langfuse at {sim.url} answered, but its answer to GET /api/public/projects/{project.id}/apiKeys "
        "is larger than the 16 MiB cap"
    )
    assert clock.sleeps == [], "a retry would meet the same answer"


# --- create: idempotence ------------------------------------------------------------------------


def test_create_then_create_again_is_one_key(sim: Any, admin: LangfuseAdminClient) -> None:
    project = sim.projects[0]
    pair = KeyPair.generate()
    first = admin.create_api_key(project.id, pair, "rotation")
    again = admin.create_api_key(project.id, pair, "rotation")
    assert first.id == again.id
    assert first.note == "rotation" and first.display_secret_key == pair.display_secret_key
    assert len(keys_with(sim, pair.public_key)) == 1
    with project_client(sim, pair) as client:
        assert client.auth_check().id == project.id


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 502, "drop": True}])
def test_create_whose_answer_is_lost_lands_exactly_once(
    sim: Any, admin: LangfuseAdminClient, fault: dict[str, Any]
) -> None:
    project = sim.projects[0]
    pair = KeyPair.generate()
    before = log_mark(sim)
    sim.inject_fault(keys_path(project.id), method="POST", after=True, **fault)
    created = admin.create_api_key(project.id, pair, "rotation")
    assert created.public_key == pair.public_key
    (landed,) = keys_with(sim, pair.public_key)
    assert landed["id"] == created.id
    posts = [r for r in logged_since(sim, before) if r["method"] == "POST"]
    assert len(posts) == 1


def test_create_failing_before_landing_is_retried(sim: Any, admin: LangfuseAdminClient) -> None:
    project = sim.projects[0]
    pair = KeyPair.generate()
    sim.inject_fault(keys_path(project.id), status=503, method="POST")
    created = admin.create_api_key(project.id, pair, "rotation")
    assert [k["id"] for k in keys_with(sim, pair.public_key)] == [created.id]


def test_create_rate_limited_is_retried(sim: Any, admin: LangfuseAdminClient, clock: FakeClock) -> None:
    project = sim.projects[0]
    pair = KeyPair.generate()
    sim.inject_fault(keys_path(project.id), status=429, method="POST", retry_after=2)
    admin.create_api_key(project.id, pair, "rotation")
    assert clock.sleeps == [2.0]
    assert len(keys_with(sim, pair.public_key)) == 1


def test_create_on_server_ignoring_predefined_keys_leaves_nothing(sim: Any, admin: LangfuseAdminClient) -> None:
    sim.configure(honour_predefined_keys=False)
    project = sim.projects[0]
    before = {k["id"] for k in all_keys(sim)}
    pair = KeyPair.generate()
    with pytest.raises(LangfuseUnsupportedServerError, match="ignores predefined") as caught:
        admin.create_api_key(project.id, pair, "rotation")
    assert "v3.121.0" in str(caught.value)
    assert {k["id"] for k in all_keys(sim)} == before


# --- delete and revocation ----------------------------------------------------------------------


def test_delete_twice_then_probe(sim: Any, admin: LangfuseAdminClient) -> None:
    project = sim.projects[0]
    pair = KeyPair.generate()
    created = admin.create_api_key(project.id, pair, "rotation")
    with project_client(sim, pair) as client:
        live = client.probe()
        assert (live.accepted, live.status_code, live.project_id) == (True, 200, project.id)
        assert admin.delete_api_key(project.id, created.id) is True
        assert admin.delete_api_key(project.id, created.id) is False
        before = log_mark(sim)
        dead = client.probe()
        assert (dead.accepted, dead.status_code) == (False, 401)
        assert len(logged_since(sim, before)) == 1
        with pytest.raises(LangfuseAuthError, match=pair.public_key):
            client.auth_check()


def test_delete_whose_answer_is_lost_reports_deleted(sim: Any, admin: LangfuseAdminClient) -> None:
    project = sim.projects[0]
    created = admin.create_api_key(project.id, KeyPair.generate(), "rotation")
    sim.inject_fault(f"{keys_path(project.id)}/{created.id}", status=503, method="DELETE", after=True)
    assert admin.delete_api_key(project.id, created.id) is True
    assert [k for k in all_keys(sim) if k["id"] == created.id] == []


def test_delete_in_unknown_project_raises(sim: Any, admin: LangfuseAdminClient) -> None:
    with pytest.raises(LangfuseNotFoundError, match="cm-nope"):
        admin.delete_api_key("cm-nope", "key")


def test_stale_cache_entry_is_flushed_by_invalidate_all(sim: Any, admin: LangfuseAdminClient) -> None:
    sim.configure(stale_after_delete=True)
    project = sim.projects[0]
    pair = KeyPair.generate()
    created = admin.create_api_key(project.id, pair, "rotation")
    with project_client(sim, pair) as client:
        assert client.probe().accepted
        assert admin.delete_api_key(project.id, created.id) is True
        assert client.probe().accepted, "the simulated race left the deleted key cached"
        with LangfuseInstanceAdmin(sim.url, SecretStr(sim.admin_api_key)) as instance:
            instance.invalidate_all_cached_keys()
        assert not client.probe().accepted


def test_wrong_admin_api_key_is_an_auth_error(sim: Any) -> None:
    instance = LangfuseInstanceAdmin(sim.url, SecretStr("not-the-admin-key"))
    with instance, pytest.raises((LangfuseAuthError, LangfuseForbiddenError)) as caught:
        instance.invalidate_all_cached_keys()
    assert "not-the-admin-key" not in every_text(caught.value)


# --- project client -----------------------------------------------------------------------------


def test_auth_check(sim: Any) -> None:
    project = sim.projects[1]
    with project_client(sim, project_pair(project)) as client:
        info = client.auth_check()
    assert (info.id, info.name, info.organization_id) == (project.id, project.name, sim.org_id)


def test_auth_check_with_org_key_is_forbidden(sim: Any) -> None:
    org_pair = KeyPair(public_key=sim.org_public_key, secret_key=SecretStr(sim.org_secret_key))
    with project_client(sim, org_pair) as client:
        with pytest.raises(LangfuseForbiddenError, match="organization key"):
            client.auth_check()
        assert client.probe().status_code == 403


def test_canary_round_trip_via_otel_and_v2_observations(sim: Any, sim_clock: SimClock) -> None:
    sim.configure(otel_delay_s=0.3)
    before = log_mark(sim)
    with project_client(sim, project_pair(sim.projects[0]), sim_clock) as client:
        trace_id = client.send_canary(attributes={"rotation.id": "r-1"})
        assert not client.canary_visible(trace_id)
        waited = client.wait_for_canary(trace_id, timeout_s=10)
    assert sim_clock.sleeps == [0.2, 0.4], "polled with doubling pauses until the 0.3 s delay had passed"
    assert waited == pytest.approx(0.6)
    paths = [r["path"] for r in logged_since(sim, before)]
    assert "/api/public/otel/v1/traces" in paths
    assert any(p.startswith("/api/public/v2/observations") for p in paths)
    assert not any(p.startswith("/api/public/traces") for p in paths)


def test_canary_on_v3_server_falls_back_to_traces(sim: Any, sim_clock: SimClock) -> None:
    sim.configure(version="3.225.4", otel_delay_s=0.2)
    before = log_mark(sim)
    with project_client(sim, project_pair(sim.projects[0]), sim_clock) as client:
        trace_id = client.send_canary()
        client.wait_for_canary(trace_id, timeout_s=10)
    paths = [r["path"] for r in logged_since(sim, before)]
    assert f"/api/public/traces/{trace_id}" in paths


def test_canary_timeout(sim: Any, sim_clock: SimClock) -> None:
    sim.configure(otel_delay_s=60)
    with project_client(sim, project_pair(sim.projects[0]), sim_clock) as client:
        trace_id = client.send_canary()
        with pytest.raises(LangfuseCanaryTimeoutError) as caught:
            client.wait_for_canary(trace_id, timeout_s=0.6, initial_poll_s=0.1)
    assert caught.value.trace_id == trace_id
    assert trace_id in str(caught.value)
    assert sim_clock.sleeps == pytest.approx([0.1, 0.2, 0.3]), "the last pause ends exactly at the timeout"
    assert caught.value.waited_s == pytest.approx(0.6)


def test_rate_limited_canary_polling_stays_within_the_timeout(sim: Any, sim_clock: SimClock) -> None:
    sim.configure(otel_delay_s=60, rate_limits={"public-api": [1, 60]})
    with project_client(sim, project_pair(sim.projects[0]), sim_clock) as client:
        trace_id = client.send_canary()
        with pytest.raises(LangfuseRateLimitedError) as caught:
            client.wait_for_canary(trace_id, timeout_s=2, initial_poll_s=0.1)
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 2
    assert sum(sim_clock.sleeps) <= 2, f"waited past the 2 s timeout: {sim_clock.sleeps}"


def test_canary_with_revoked_key_is_an_auth_error(sim: Any, admin: LangfuseAdminClient) -> None:
    project = sim.projects[0]
    pair = KeyPair.generate()
    created = admin.create_api_key(project.id, pair, "rotation")
    admin.delete_api_key(project.id, created.id)
    with project_client(sim, pair) as client, pytest.raises(LangfuseAuthError):
        client.send_canary()


# --- secret hygiene -----------------------------------------------------------------------------


def test_no_secret_in_any_exception_repr_or_log(
    sim: Any, admin: LangfuseAdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    project = sim.projects[0]
    pair = KeyPair.generate()
    secrets = [sim.org_secret_key, sim.admin_api_key, pair.secret_key.get_secret_value()]
    secrets += [p.secret_key for p in sim.projects]
    texts = [repr(admin)]
    failures: list[LangfuseError] = []

    def expect_failure(call: Any) -> None:
        try:
            call()
        except LangfuseError as exc:
            failures.append(exc)
        else:
            raise AssertionError("expected a LangfuseError")

    sim.inject_fault(keys_path(project.id), status=503, method="POST", after=True)
    admin.create_api_key(project.id, pair, "rotation")
    expect_failure(
        lambda: admin.create_api_key(
            project.id, KeyPair(public_key=KeyPair.generate().public_key, secret_key=pair.secret_key), "x"
        )
    )
    wrong = LangfuseAdminClient(sim.url, sim.org_public_key, SecretStr(sim.org_secret_key + "x"))
    texts.append(repr(wrong))
    expect_failure(wrong.list_projects)
    with project_client(sim, pair) as client:
        texts.append(repr(client))
        expect_failure(lambda: LangfuseAdminClient(sim.url, pair.public_key, pair.secret_key).list_projects())
        sim.configure(honour_predefined_keys=False)
        expect_failure(lambda: admin.create_api_key(project.id, KeyPair.generate(), "old"))
        sim.configure(honour_predefined_keys=True)
        sim.inject_fault(keys_path(project.id), status=503, count=10, method="GET")
        expect_failure(lambda: admin.list_api_keys(project.id))
    assert len(failures) == 5
    texts += [every_text(exc) for exc in failures]
    texts.append(caplog.text)
    blob = "\n".join(texts)
    for secret in secrets:
        assert secret not in blob
    assert "sk-lf-" not in caplog.text.replace("sk-lf-...", "")


def test_a_langfuse_answer_that_trickles_or_never_ends_is_cut_off_at_the_timeout() -> None:
    import threading

    from connectors.errors import LangfuseError
    from tests.hostile_http import Trickler

    with Trickler(interval_s=0.2) as server:
        client = LangfuseAdminClient(
            server.url, "pk-lf-org", SecretStr("sk-lf-org-trickle"), timeout_s=1.0, retry=RetryPolicy(max_attempts=1)
        )
        outcome: list[object] = []

        def call() -> None:
            try:
                client.list_api_keys("project-1")
            except LangfuseError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        # The trickle lasts 2,000 s (10,000 bytes, one every 0.2 s): a client that only has a
        # per-read timeout reads it to the end. Only that, or a hang, outlasts 60 s.
        worker.join(60)
        assert not worker.is_alive(), "the call was not cut off"
    assert outcome and "no response within 1s" in str(outcome[0])
