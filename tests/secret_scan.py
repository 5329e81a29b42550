"""Find secrets in everything a rotation run could have written.

``scan(secrets, sources)`` looks for each known secret value, and for anything shaped like a
Langfuse secret key (``sk-lf-<uuid>``, known or not), in every source: as raw bytes, inside
base64 blobs (Prefect result records and pickles), those blobs decompressed, and hex runs
(PostgreSQL ``bytea`` in a dump). Findings name the secret by label and where it was, never by
value, so a failing assertion does not print the secret into the test log.

The ``collect_*`` helpers gather the sources: files under a directory (``PREFECT_HOME``, the
audit log), a ``pg_dump`` of the Prefect database, the Prefect API (artifacts, events, logs, flow
and task runs with their state messages, variables, blocks), and the notification sink.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import hashlib
import json
import lzma
import re
import subprocess
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devstack.prefect_server import PG_ADMIN_DSN
from devstack.sinks import JsonSink

Source = tuple[str, bytes]
"""(where, content)"""

SECRET_KEY_SHAPE = re.compile(rb"sk-lf-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")
_HEX_RUN = re.compile(rb"\\x((?:[0-9a-fA-F]{2}){12,})")
_DECOMPRESSORS: tuple[Callable[[bytes], bytes], ...] = (zlib.decompress, lzma.decompress, bz2.decompress)


@dataclass(frozen=True)
class Finding:
    secret: str
    """The secret's label (or ``sk-lf-… #<sha256 prefix>`` for an unknown one); never its value."""
    where: str


def _variants(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "", data
    for match in _BASE64_RUN.finditer(data):
        try:
            decoded = base64.b64decode(match.group(0), validate=True)
        except (binascii.Error, ValueError):
            continue
        yield "base64", decoded
        for decompress in _DECOMPRESSORS:
            try:
                yield "base64+compressed", decompress(decoded)
            except Exception:  # not compressed with this one
                continue
    for match in _HEX_RUN.finditer(data):
        yield "hex", bytes.fromhex(match.group(1).decode())


def scan(secrets: Mapping[str, str], sources: Iterable[Source]) -> list[Finding]:
    """Every place a secret of ``secrets`` (label to value), or any ``sk-lf-<uuid>``, occurs."""
    by_value = {value.encode(): label for label, value in secrets.items() if value}
    findings: dict[Finding, None] = {}
    for where, data in sources:
        for how, blob in _variants(data):
            place = f"{where} ({how})" if how else where
            for value, label in by_value.items():
                if value in blob:
                    findings[Finding(label, place)] = None
            for match in SECRET_KEY_SHAPE.finditer(blob):
                value = match.group(0)
                label = by_value.get(value) or f"sk-lf-… #{hashlib.sha256(value).hexdigest()[:8]} (unknown)"
                findings[Finding(label, place)] = None
    return list(findings)


# --- collectors -----------------------------------------------------------------------------------


def collect_files(root: Path, *, label: str, skip: Iterable[Path] = ()) -> list[Source]:
    skipped = {p.resolve() for p in skip}
    found: list[Source] = []
    for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if path.is_file() and path.resolve() not in skipped:
            found.append((f"{label}/{path.relative_to(root) if root.is_dir() else path.name}", path.read_bytes()))
    return found


def collect_postgres(db_name: str) -> list[Source]:
    """A data-only ``pg_dump`` of the database (every table, every row)."""
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{db_name}"
    dump = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", "--no-privileges", dsn], capture_output=True, check=True, timeout=120
    )
    return [(f"postgres dump of {db_name}", dump.stdout)]


def _paged(client: httpx.Client, path: str, body: dict[str, Any] | None = None) -> list[Any]:
    rows: list[Any] = []
    offset = 0
    while True:
        response = client.post(path, json={**(body or {}), "limit": 200, "offset": offset})
        response.raise_for_status()
        page = response.json()
        rows.extend(page)
        if len(page) < 200:
            return rows
        offset += 200


def collect_prefect_api(api_url: str) -> list[Source]:
    """What the Prefect API shows anyone who can reach it."""
    sources: list[Source] = []
    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=30) as client:
        for name, path in [
            ("artifacts", "artifacts/filter"),
            ("flow runs", "flow_runs/filter"),
            ("task runs", "task_runs/filter"),
            ("logs", "logs/filter"),
            ("variables", "variables/filter"),
            ("block documents", "block_documents/filter"),
        ]:
            sources.append((f"Prefect API {name}", json.dumps(_paged(client, path)).encode()))
        states: list[Any] = []
        for run in json.loads(sources[1][1]):
            response = client.get("flow_run_states/", params={"flow_run_id": run["id"]})
            response.raise_for_status()
            states.extend(response.json())
        sources.append(("Prefect API flow run states", json.dumps(states).encode()))
        sources.append(("Prefect API events", json.dumps(read_events(client)).encode()))
    return sources


def read_events(client: httpx.Client) -> list[Any]:
    events: list[Any] = []
    response = client.post("events/filter", json={"limit": 50})
    while True:
        response.raise_for_status()
        page = response.json()
        events.extend(page["events"])
        if not page.get("next_page"):
            return events
        response = client.get(page["next_page"])


def collect_sink(sink: JsonSink) -> list[Source]:
    return [(f"notification sink payload {i} ({r.path})", r.text.encode()) for i, r in enumerate(sink.received())]
