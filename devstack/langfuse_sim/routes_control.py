"""Test controls under `/_sim/` (loopback clients only). Nothing here ever returns a secret."""

from __future__ import annotations

from typing import Any

from devstack.langfuse_sim.config import ConfigError
from devstack.langfuse_sim.faults import FaultError, parse_fault
from devstack.langfuse_sim.model import generate_key_pair, iso_to_ts
from devstack.langfuse_sim.state import SimState
from devstack.langfuse_sim.wire import BodyError, Request, Response


def _json_body(req: Request) -> Any:
    try:
        return req.json()
    except BodyError as exc:
        raise ConfigError(f"invalid JSON body: {exc}") from exc


def keys(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        rows = sorted(state.store.keys.values(), key=lambda k: k.created_at)
        return Response(200, {"keys": [k.control_view() for k in rows]})


MAX_BULK_KEYS = 200_000


def add_keys(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """Add `count` generated keys to a project (`{"project_id", "count", "note"?}`), their secrets
    discarded: a project with more keys than any answer should carry (e.g. 100,000)."""
    try:
        body = _json_body(req)
    except ConfigError as exc:
        return Response(400, {"error": str(exc)})
    project_id = body.get("project_id") if isinstance(body, dict) else None
    count = body.get("count") if isinstance(body, dict) else None
    note = body.get("note", "bulk") if isinstance(body, dict) else None
    if (
        not isinstance(project_id, str)
        or not isinstance(count, int)
        or isinstance(count, bool)
        or not 1 <= count <= MAX_BULK_KEYS
        or not isinstance(note, str)
    ):
        return Response(
            400, {"error": f'body must be {{"project_id": "...", "count": 1..{MAX_BULK_KEYS}, "note": "..."}}'}
        )
    with state.lock:
        store = state.store
        if project_id not in store.projects:
            return Response(404, {"error": f"no project {project_id}"})
        for _ in range(count):
            public_key, secret_key = generate_key_pair()
            store.add_key(
                scope="PROJECT", project_id=project_id, note=note, public_key=public_key, secret_key=secret_key
            )
        state.persist()
    return Response(201, {"created": count})


def patch_key(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """Backdate a key: `{"createdAt": "<ISO 8601>"}`; the key is named by its id or public key."""
    try:
        body = _json_body(req)
        created = body.get("createdAt") if isinstance(body, dict) else None
        if not isinstance(created, str):
            raise ConfigError('body must be {"createdAt": "<ISO 8601 time>"}')
        try:
            when = iso_to_ts(created)
        except ValueError:
            raise ConfigError(f"createdAt is not an ISO 8601 time: {created!r}") from None
    except ConfigError as exc:
        return Response(400, {"error": str(exc)})
    with state.lock:
        store = state.store
        key = store.keys.get(params["key"]) or store.key_by_public(params["key"])
        if key is None:
            return Response(404, {"error": f"no key {params['key']}"})
        key.created_at = when
        state.persist()
        return Response(200, key.control_view())


def users(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        return Response(200, {"users": [u.to_json() for u in state.store.users.values()]})


def add_user(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """Create a user (`{"email", "name"}`); on a real server users sign up or come through SCIM."""
    try:
        body = _json_body(req)
    except ConfigError as exc:
        return Response(400, {"error": str(exc)})
    email = body.get("email") if isinstance(body, dict) else None
    name = body.get("name", "") if isinstance(body, dict) else None
    if not isinstance(email, str) or "@" not in email or not isinstance(name, str):
        return Response(400, {"error": 'body must be {"email": "a@b", "name": "..."}'})
    with state.lock:
        if any(u.email == email for u in state.store.users.values()):
            return Response(409, {"error": f"a user with email {email} exists"})
        user = state.store.add_user(email, name)
        state.persist()
        return Response(201, user.to_json())


def requests(state: SimState, req: Request, params: dict[str, str]) -> Response:
    raw = req.param("since") or "0"
    if not raw.isdigit():
        return Response(400, {"error": "since must be a non-negative integer"})
    since = int(raw)
    with state.lock:
        found = [dict(r) for r in state.requests if r["seq"] > since]
        return Response(200, {"requests": found, "next": state.seq})


def add_fault(state: SimState, req: Request, params: dict[str, str]) -> Response:
    try:
        raw = _json_body(req)
        with state.lock:
            fault = parse_fault(raw, state.next_fault_id)
            state.next_fault_id += 1
            state.faults.append(fault)
    except (ConfigError, FaultError) as exc:
        return Response(400, {"error": str(exc)})
    return Response(201, fault.to_json())


def list_faults(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        return Response(200, {"faults": [f.to_json() for f in state.faults]})


def clear_faults(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        removed = len(state.faults)
        state.faults.clear()
    return Response(200, {"cleared": removed})


def get_config(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        return Response(200, state.config.to_json())


def set_config(state: SimState, req: Request, params: dict[str, str]) -> Response:
    try:
        changes = _json_body(req)
        if not isinstance(changes, dict):
            raise ConfigError("config body must be a JSON object")
        with state.lock:
            state.config.update(changes)
            if "rate_limits" in changes:
                state.rate_limiter.clear()
            return Response(200, state.config.to_json())
    except ConfigError as exc:
        return Response(400, {"error": str(exc)})


def reset(state: SimState, req: Request, params: dict[str, str]) -> Response:
    state.reset()
    return Response(200, {"reset": True})


def get_clock(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        return Response(200, {"offset_s": state.clock_offset_s, "now": state.now()})


def advance_clock(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """Move the simulator's clock forward: `{"advance_s": N}` (N >= 0; time never runs backwards)."""
    try:
        body = _json_body(req)
    except ConfigError as exc:
        return Response(400, {"error": str(exc)})
    seconds = body.get("advance_s") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return Response(400, {"error": 'body must be {"advance_s": <seconds, >= 0>}'})
    offset = state.advance_clock(float(seconds))
    return Response(200, {"offset_s": offset, "now": state.now()})


def race(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        return Response(200, {"deletes_in_window": state.deletes_in_window})


def release_race(state: SimState, req: Request, params: dict[str, str]) -> Response:
    return Response(200, {"released": state.release_race_windows()})


def flush_cache(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        flushed = state.cache.clear()
    return Response(200, {"flushed": flushed})


def bootstrap(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """The bootstrap line minus secrets (useful to find ids after a restart)."""
    with state.lock:
        info = state.bootstrap.describe(state.store, "", None)
    info.pop("url", None)
    info.pop("admin_api_key", None)
    info.pop("org_secret_key", None)
    for project in info["projects"]:
        project.pop("secret_key", None)
    return Response(200, info)
