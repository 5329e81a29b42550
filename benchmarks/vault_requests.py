"""Client CPU per Vault request: hvac's own adapter (requests) against ``LeanJSONAdapter`` (urllib3).

    .venv/bin/python benchmarks/vault_requests.py [--pairs 2000]

Against a dev OpenBao (``devstack.openbao``), one thread: ``VaultStore.read_current`` and
``read_handover`` in turn (a KV read and a metadata read, the two kinds a fleet entry makes most),
``--pairs`` times with each adapter, twice, alternately. Prints the CPU this process spent
(``time.process_time``) per request: what the rotator pays per Vault request besides OpenBao's own
CPU. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hvac.adapters  # noqa: E402
from pydantic import SecretStr  # noqa: E402

import connectors.vault as vault  # noqa: E402
from connectors.keypair import KeyPair  # noqa: E402
from connectors.store import SecretLocation  # noqa: E402
from connectors.vault_auth import TokenAuth  # noqa: E402
from devstack.openbao import OpenBaoServer  # noqa: E402


def cpu_per_request(bao: OpenBaoServer, adapter: Any, pairs: int) -> float:
    """Milliseconds of this process's CPU per request with ``adapter``."""
    lean = vault.LeanJSONAdapter
    vault.LeanJSONAdapter = adapter  # what VaultStore hands hvac.Client
    try:
        store = vault.VaultStore(bao.url, auth=TokenAuth(SecretStr(bao.root_token)), mount="secret", timeout_s=30)
    finally:
        vault.LeanJSONAdapter = lean
    loc = SecretLocation(path=f"bench/vault-requests/{time.monotonic_ns()}")
    store.seed(loc, KeyPair.generate(), "http://langfuse.example")
    for _ in range(50):  # connections and caches warm
        store.read_current(loc)
    began = time.process_time()
    for _ in range(pairs):
        store.read_current(loc)
        store.read_handover(loc)
    spent = time.process_time() - began
    store.close()
    return 1000 * spent / (2 * pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()
    adapters = {
        "hvac JSONAdapter (requests)": hvac.adapters.JSONAdapter,
        "LeanJSONAdapter (urllib3)": vault.LeanJSONAdapter,
    }
    with OpenBaoServer() as bao:
        for _ in range(2):
            for name, adapter in adapters.items():
                print(f"{name:28s} {cpu_per_request(bao, adapter, args.pairs):.3f} ms CPU per request", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
