"""A thin client of Prefect's REST API over httpx, without importing ``prefect``.

Every caller that talks to a Prefect server (the entry lock, the trigger's emergency slot, the
fleet's pacing budgets, run records, handover liveness) goes through ``PrefectApi``. Two reasons to
talk to the API directly (docs/emergency.md, docs/fleet.md):

- ``import prefect`` costs ~2 s of CPU; an emergency must not spend it before containing a key;
- Prefect's client queues slot acquisitions through one service, so dozens of concurrent fleet
  entries each asking for their own limit time out behind each other.

Only public, documented endpoints are used: ``/v2/concurrency_limits/*`` (leases since Prefect
3.4), ``/flows/``, ``/flow_runs/``, ``/artifacts/``, ``/deployments/name/``.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from typing import Any

import httpx
from pydantic import BaseModel

from connectors.errors import PrefectApiError
from connectors.tls import shared_ssl_context

_LOCKED = 423
_CONFLICT = 409


def prefect_api_url() -> str | None:
    """The API URL Prefect itself would use: ``PREFECT_API_URL`` from the environment, else
    ``prefect.toml`` in the working directory, else the active profile (``PREFECT_PROFILE`` or the
    profiles file's ``active``) in ``PREFECT_PROFILES_PATH`` (default ``$PREFECT_HOME/profiles.toml``,
    ``~/.prefect``). Read without importing Prefect, which costs seconds. None: the embedded server."""
    import tomllib
    from pathlib import Path

    if "PREFECT_API_URL" in os.environ:
        return os.environ["PREFECT_API_URL"] or None
    try:
        local = tomllib.loads(Path("prefect.toml").read_text())
        url = local.get("api", {}).get("url")
        if isinstance(url, str) and url:
            return url
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        pass
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles_path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(profiles_path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    profile = profiles.get("profiles", {}).get(active, {})
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return url if isinstance(url, str) and url else None


def authorization_header(*, auth_string: str | None, api_key: str | None) -> dict[str, str]:
    """The one credential rule, Prefect's own (``PrefectClient.__init__``): an auth string wins
    (HTTP Basic), else an API key (Bearer), else nothing."""
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


class ConcurrencyLimit(BaseModel):
    """What ``ensure_limit`` asks for: ``slot_decay_per_second`` makes a rate limit."""

    name: str
    limit: int = 1
    slot_decay_per_second: float | None = None


class Lease(BaseModel):
    """One slot granted under a lease; the server frees it when the lease expires."""

    lease_id: str


class RunRecords:
    """The run-record calls (``flows.fleet.prefect_run``), over whatever posts to the API: ``_post``
    takes a path relative to the API URL (``"flow_runs/"``) and a JSON body."""

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        raise NotImplementedError

    def flow_id(self, flow_name: str) -> str:
        return str(self._post("flows/", {"name": flow_name}).json()["id"])

    def create_flow_run(
        self,
        flow_id: str,
        *,
        name: str,
        tags: list[str],
        parameters: dict[str, object],
        state: dict[str, object],
        deployment_id: str | None = None,
    ) -> str:
        body = {"flow_id": flow_id, "name": name, "tags": tags, "parameters": parameters, "state": state}
        if deployment_id is not None:
            body["deployment_id"] = deployment_id
        return str(self._post("flow_runs/", body).json()["id"])

    def set_flow_run_state(self, run_id: str, state: dict[str, object]) -> None:
        self._post(f"flow_runs/{run_id}/set_state", {"state": state, "force": True})

    def create_artifact(self, run_id: str, *, key: str, markdown: str, description: str) -> None:
        body = {"key": key, "type": "markdown", "data": markdown, "description": description, "flow_run_id": run_id}
        self._post("artifacts/", body)

    def create_progress_artifact(self, run_id: str, *, key: str, percent: float, description: str) -> str:
        """A progress artifact (``percent`` done) on run ``run_id``; its id, for ``update_artifact``."""
        body = {"key": key, "type": "progress", "data": percent, "description": description, "flow_run_id": run_id}
        return str(self._post("artifacts/", body).json()["id"])


class PrefectApi(RunRecords):
    """A small, thread-safe client of the concurrency-limit endpoints and the run records."""

    def __init__(self, api_url: str, *, auth_string: str | None = None, api_key: str | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.api_url + "/",
            headers=authorization_header(auth_string=auth_string, api_key=api_key),
            timeout=30.0,
            verify=shared_ssl_context(),
        )
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._listed: set[str] | None = None
        self._list_limits = False

    @classmethod
    def from_env(cls) -> PrefectApi | None:
        """From ``PREFECT_API_URL``, ``PREFECT_API_AUTH_STRING``, ``PREFECT_API_KEY``; None without a URL."""
        url = os.environ.get("PREFECT_API_URL")
        if not url:
            return None
        return cls(
            url, auth_string=os.environ.get("PREFECT_API_AUTH_STRING"), api_key=os.environ.get("PREFECT_API_KEY")
        )

    @classmethod
    def from_configured_url(cls) -> PrefectApi | None:
        """At the URL ``prefect_api_url`` finds (environment, ``prefect.toml``, profile), with the
        credentials from the environment; None: the embedded server."""
        url = prefect_api_url()
        if not url:
            return None
        return cls(
            url, auth_string=os.environ.get("PREFECT_API_AUTH_STRING"), api_key=os.environ.get("PREFECT_API_KEY")
        )

    def expect_many_limits(self) -> None:
        """A fleet run takes hundreds of entries' limits: list the existing ones once (a few calls)
        and create the missing ones before their first increment, which then never comes back
        empty (one call per new entry fewer)."""
        self._list_limits = True

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: Any) -> httpx.Response:
        for attempt in range(3):  # only a request that never reached the server is sent again
            try:
                response = self._http.post(path, json=body)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))
        if response.status_code >= 400 and response.status_code not in (_LOCKED, _CONFLICT):
            raise PrefectApiError(f"Prefect API POST /{path}: HTTP {response.status_code}")
        return response

    def ensure_limit(self, limit: ConcurrencyLimit) -> None:
        """The global concurrency limit exists with these settings (created, or updated when it
        exists with others; a concurrent creation is fine)."""
        response = self._http.get(f"v2/concurrency_limits/{limit.name}")
        if response.status_code == 404:
            self._post("v2/concurrency_limits/", limit.model_dump(exclude_none=True))
        elif response.status_code >= 400:
            raise PrefectApiError(f"Prefect API GET /v2/concurrency_limits/<name>: HTTP {response.status_code}")
        else:
            found = response.json()
            wanted = limit.model_dump(exclude={"name"}, exclude_none=True)
            if any(found.get(key) != value for key, value in wanted.items()):
                patched = self._http.patch(f"v2/concurrency_limits/{limit.name}", json=wanted)
                if patched.status_code >= 400:
                    raise PrefectApiError(
                        f"Prefect API PATCH /v2/concurrency_limits/<name>: HTTP {patched.status_code}"
                    )
        with self._lock:
            self._known.add(limit.name)

    def acquire(self, name: str, *, lease_s: float, timeout_s: float) -> Lease | None:
        """A lease on one slot of ``name`` (limit 1, created on demand), or None when it stays
        taken for ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        body = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": lease_s}
        existing = self._existing_limits()
        created = False
        if existing is not None and name not in existing and name not in self._known:
            self._create_lock_limit(name)
            created = True
        while True:
            response = self._post("v2/concurrency_limits/increment-with-lease", body)
            if response.status_code != _LOCKED:
                data = response.json()
                if not data.get("limits"):
                    # Created on demand: one call per entry in the usual case. A limit this process
                    # knew may have been deleted on the server since (by an operator): created
                    # again, once, rather than failing every later run of a long-lived process.
                    if created:
                        raise PrefectApiError(f"Prefect concurrency limit {name} does not exist")
                    self._create_lock_limit(name)
                    created = True
                    continue
                return Lease(lease_id=str(data["lease_id"]))
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(max(0.05, min(_retry_after(response), left, 2.0)))

    def acquire_all(self, names: list[str], *, lease_s: float) -> Lease | None:
        """One lease on one slot of each of ``names`` (limits of 1), in one request and all or
        nothing: None, holding nothing, when any of them is taken (423) or does not exist (the
        server then grants a lease over the others, which is given back at once)."""
        wanted = set(names)
        body = {"names": sorted(wanted), "slots": 1, "mode": "concurrency", "lease_duration": lease_s}
        response = self._post("v2/concurrency_limits/increment-with-lease", body)
        if response.status_code == _LOCKED:
            return None
        data = response.json()
        lease = Lease(lease_id=str(data["lease_id"]))
        if {str(limit.get("name")) for limit in data.get("limits") or []} != wanted:
            self.release(lease.lease_id)
            return None
        return lease

    def missing_limits(self, names: list[str]) -> list[str]:
        """Those of ``names`` that neither the list of limits (``expect_many_limits``) nor this
        client's own creations say exist; none when the limits were not listed."""
        existing = self._existing_limits()
        if existing is None:
            return []
        with self._lock:
            return [name for name in names if name not in existing and name not in self._known]

    def create_lock_limits(self, names: list[str]) -> None:
        """Create these entry-lock limits (limit 1); one created meanwhile by another is fine."""
        for name in names:
            self._create_lock_limit(name)

    def _create_lock_limit(self, name: str) -> None:
        self._post("v2/concurrency_limits/", {"name": name, "limit": 1})  # 409: created meanwhile
        with self._lock:
            self._known.add(name)

    def take_rate(self, name: str, slots: int) -> None:
        """``slots`` permits of the rate limit ``name`` (a limit with slot decay), waiting as long
        as the server asks (its slots come back by decay, never by release)."""
        body = {"names": [name], "slots": slots, "mode": "rate_limit"}
        while True:
            response = self._post("v2/concurrency_limits/increment", body)
            if response.status_code != _LOCKED:
                return
            time.sleep(max(0.05, min(_retry_after(response), 5.0)))

    def _existing_limits(self) -> set[str] | None:
        """The names of all concurrency limits, listed once (after ``expect_many_limits``)."""
        if not self._list_limits:
            return None
        with self._lock:
            if self._listed is None:
                names: set[str] = set()
                offset, page = 0, 200
                try:
                    while True:
                        found = self._post("v2/concurrency_limits/filter", {"offset": offset, "limit": page}).json()
                        names.update(str(limit["name"]) for limit in found)
                        if len(found) < page:
                            break
                        offset += page
                except (httpx.HTTPError, PrefectApiError, ValueError, KeyError, TypeError):
                    self._list_limits = False  # each entry finds out on its own, as without the list
                    return None
                self._listed = names
            return self._listed

    def read_flow_run(self, run_id: str) -> dict[str, Any] | None:
        """The flow run ``run_id`` as the API describes it (``tags``, ``state_type``, ...), or None
        if there is none. ``run_id`` must be a UUID (it goes into the path)."""
        response = self._http.get(f"flow_runs/{uuid.UUID(run_id)}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise PrefectApiError(f"Prefect API GET /flow_runs/<id>: HTTP {response.status_code}")
        data = response.json()
        return data if isinstance(data, dict) else None

    def read_flow_runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """``POST /flow_runs/filter`` with ``body`` (Prefect's filter JSON)."""
        found = self._post("flow_runs/filter", body).json()
        return [run for run in found if isinstance(run, dict)] if isinstance(found, list) else []

    def set_flow_run_tags(self, run_id: str, tags: list[str]) -> None:
        response = self._http.patch(f"flow_runs/{uuid.UUID(run_id)}", json={"tags": tags})
        if response.status_code >= 400:
            raise PrefectApiError(f"Prefect API PATCH /flow_runs/<id>: HTTP {response.status_code}")

    def update_artifact(self, artifact_id: str, *, data: object, description: str) -> None:
        response = self._http.patch(
            f"artifacts/{uuid.UUID(artifact_id)}", json={"data": data, "description": description}
        )
        if response.status_code >= 400:
            raise PrefectApiError(f"Prefect API PATCH /artifacts/<id>: HTTP {response.status_code}")

    def deployment_id(self, name: str) -> str | None:
        """The id of deployment ``name`` ("flow/deployment"), or None if there is none."""
        flow, _, deployment = name.partition("/")
        response = self._http.get(f"deployments/name/{flow}/{deployment}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise PrefectApiError(f"Prefect API GET /deployments/name/...: HTTP {response.status_code}")
        return str(response.json()["id"])

    def renew(self, lease_id: str, lease_s: float) -> None:
        self._post(f"v2/concurrency_limits/leases/{lease_id}/renew", {"lease_duration": lease_s})

    def release(self, lease_id: str) -> None:
        """Give the slot back; an expired or already released lease is not an error."""
        response = self._http.post("v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id})
        if response.status_code >= 400 and response.status_code != 404:
            raise PrefectApiError(f"Prefect API release of a lease: HTTP {response.status_code}")


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After") or 0.5)
    except ValueError:
        return 0.5
