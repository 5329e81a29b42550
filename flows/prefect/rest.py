"""The per-entry Prefect lock over Prefect's REST API, without importing ``prefect``.

The same global concurrency limit ``langfuse-rotate-<entry>`` (limit 1, leased) and the same lease
file as ``flows.rotation.lock.prefect_lock``, so both kinds of holder exclude each other. Two reasons to
talk to the API directly:

- ``import prefect`` costs ~2 s of CPU; an emergency must not spend it before containing a key
  (docs/emergency.md);
- Prefect's client queues slot acquisitions through one service, so dozens of concurrent fleet
  entries each asking for their own limit time out behind each other.

Uses ``PREFECT_API_URL`` (and ``PREFECT_API_AUTH_STRING`` or ``PREFECT_API_KEY``) from the
environment, as the command line does to decide whether a server is configured.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from connectors.tls import shared_ssl_context
from flows.rotation.lock import LockHeld, clear_lease, lock_name, read_lease, slot_taken, slot_wait_budget, write_lease

_LOCKED = 423


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


def first_start_of_embedded_server() -> bool:
    """True when Prefect's embedded server has no database yet (its first start creates and
    migrates one: 20 s or more on 2 cores)."""
    from pathlib import Path

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_API_DATABASE_CONNECTION_URL"
    )
    if url and not url.startswith("sqlite"):
        return False
    return not (home / "prefect.db").exists()


def embedded_server_notice() -> str | None:
    """What a command says before it starts Prefect's embedded server (None when a server is
    configured), so seconds of silence, or the first start's migration, are explained."""
    if prefect_api_url():
        return None
    if first_start_of_embedded_server():
        return (
            "starting Prefect's embedded server (no PREFECT_API_URL); its first start creates and migrates "
            "its database: 20 s or more ..."
        )
    return "starting Prefect's embedded server (no PREFECT_API_URL) ..."


class PrefectApiError(Exception):
    """The Prefect API answered something unexpected (status and path only)."""


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


class PrefectRest(RunRecords):
    """A small, thread-safe client for the v2 concurrency-limit endpoints and the run records."""

    def __init__(self, api_url: str, *, auth_string: str | None = None, api_key: str | None = None) -> None:
        headers = {}
        if auth_string:
            headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
        elif api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=api_url.rstrip("/") + "/", headers=headers, timeout=30.0, verify=shared_ssl_context()
        )
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._listed: set[str] | None = None
        self._list_limits = False

    @classmethod
    def from_env(cls) -> PrefectRest | None:
        url = os.environ.get("PREFECT_API_URL")
        if not url:
            return None
        auth, key = os.environ.get("PREFECT_API_AUTH_STRING"), os.environ.get("PREFECT_API_KEY")
        return cls(url, auth_string=auth, api_key=key)

    @classmethod
    def from_settings(cls) -> PrefectRest | None:
        """From Prefect's settings (environment or profile); for code that runs in a flow, where
        ``prefect`` is loaded anyway. None without an API URL (the ephemeral server)."""
        from prefect.settings import get_current_settings

        api = get_current_settings().api
        if not api.url:
            return None
        key = api.key.get_secret_value() if api.key is not None else None
        auth = api.auth_string.get_secret_value() if api.auth_string is not None else None
        return cls(str(api.url), auth_string=auth, api_key=key)

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
        if response.status_code >= 400 and response.status_code not in (_LOCKED, 409):
            raise PrefectApiError(f"Prefect API POST /{path}: HTTP {response.status_code}")
        return response

    def acquire(self, name: str, *, lease_s: float, timeout_s: float) -> str | None:
        """A lease on one slot of ``name``, or None when it stays taken for ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        body = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": lease_s}
        existing = self._existing_limits()
        if existing is not None and name not in existing and name not in self._known:
            self._post("v2/concurrency_limits/", {"name": name, "limit": 1})  # 409: created meanwhile
            with self._lock:
                self._known.add(name)
        while True:
            response = self._post("v2/concurrency_limits/increment-with-lease", body)
            if response.status_code != _LOCKED:
                data = response.json()
                if not data.get("limits"):  # created on demand: one call per entry in the usual case
                    if name in self._known:
                        raise PrefectApiError(f"Prefect concurrency limit {name} does not exist")
                    self._post("v2/concurrency_limits/", {"name": name, "limit": 1})
                    with self._lock:
                        self._known.add(name)
                    continue
                return str(data["lease_id"])
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            retry_after = float(response.headers.get("Retry-After") or 0.5)
            time.sleep(max(0.05, min(retry_after, left, 2.0)))

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
        response = self._http.post("v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id})
        if response.status_code >= 400 and response.status_code != 404:  # 404: expired or released
            raise PrefectApiError(f"Prefect API release of a lease: HTTP {response.status_code}")


@contextlib.contextmanager
def rest_prefect_lock(
    api: PrefectRest,
    entry: str,
    *,
    wait_s: float,
    lease_s: int,
    on_wait: Callable[[], None] | None = None,
    take_over_after_s: float | None = None,
) -> Iterator[LockHeld]:
    """``flows.rotation.lock.prefect_lock`` over REST, with the same waiting, take-over and lease file: the
    caller holds the entry's flock (so a lease file found here was left by a holder on this host
    that is gone: its slot is released first)."""
    name = lock_name(entry)
    stale = read_lease(entry)
    if stale is not None:
        with contextlib.suppress(httpx.HTTPError, PrefectApiError):
            api.release(stale)
        clear_lease(entry)
    held = LockHeld()
    budget = slot_wait_budget(wait_s, take_over_after_s)
    deadline = time.monotonic() + budget
    lease_id: str | None = None
    while lease_id is None:
        # Short attempts when someone waits actively (``on_wait``: an emergency refreshing its
        # handover request), one long one otherwise.
        attempt_s = 1.0 if on_wait is not None else max(budget, 1.0)
        lease_id = api.acquire(name, lease_s=lease_s, timeout_s=attempt_s)
        if lease_id is not None:
            break
        if time.monotonic() < deadline:
            if on_wait is not None:
                on_wait()
            continue
        held.taken_over = slot_taken(entry, take_over_after_s)
        yield held
        return
    write_lease(entry, lease_id)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            with contextlib.suppress(httpx.HTTPError, PrefectApiError):
                api.renew(lease_id, lease_s)

    renewer = threading.Thread(target=renew, name=f"lease-{entry}", daemon=True)
    renewer.start()
    try:
        yield held
    finally:
        stop.set()
        renewer.join(5)
        with contextlib.suppress(httpx.HTTPError, PrefectApiError):
            api.release(lease_id)
        clear_lease(entry)
