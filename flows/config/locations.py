"""Which secret a store path reaches, so that no two holders share one (README "Safety guarantees").

Two entries at one secret each think they own its key: rotating one revokes the key the other's
services still use. The organization key's secret and an entry's staging place are taken too.
Store names are only the configuration's labels: what counts is the secret on the server, so
the same server under two store names is one store.

- Vault: the server (host, with ``localhost``/``127.0.0.0/8``/``::1`` as one loopback host,
  and port), the namespace and mount together (Vault routes ``ns/mount`` either way) and the
  path. A rotation stages at ``<path>/rotation-pending``: that place is the entry's too.
- AWS Secrets Manager: the endpoint, the region and the secret's name (from its ARN when the path
  is one; a full ARN's ``-XXXXXX`` suffix dropped). AWS stages in version stages of the same
  secret. Two stores are told apart by account only when both say which one they are in (a
  ``role_arn``, or the secret's ARN) and those differ, or both name an AWS ``profile`` and those
  differ; otherwise they may be the same account, and count as one.
- Another store kind: its store name and the path (nothing known about its server), unless its
  model says more.

Each kind's model says where its paths go (``place_base`` and ``places`` in
``flows.config.stores``); this module only compares. Nothing here reads a store; it is decided
from the configuration alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flows.config.places import Account, Key, Place
from flows.config.stores import StoreSettings


class StorePlaces:
    """The places of paths in the configured stores (each store's server worked out once)."""

    def __init__(self, stores: Mapping[str, StoreSettings]) -> None:
        self._stores = stores
        self._bases: dict[str, tuple[Key, Account]] = {}

    def places(self, store: str, path: str) -> list[Place]:
        """The secret at ``path`` and, where the store keeps one apart, its staging place."""
        base, account = self._base(store)
        return self._stores[store].places(base, account, path)

    def _base(self, store: str) -> tuple[Key, Account]:
        if store not in self._bases:
            self._bases[store] = self._stores[store].place_base(store)
        return self._bases[store]


def _same_account(a: Account, b: Account) -> bool:
    return a is None or b is None or a[0] != b[0] or a == b


@dataclass(frozen=True)
class Holder:
    """Who holds a place: an entry (its secret or its staging place) or the organization key."""

    entry: str | None
    """None: the organization key."""
    staging: bool = False

    def describe(self) -> str:
        if self.entry is None:
            return "the organization key (langfuse.org_key)"
        return f"the staging place of entry '{self.entry}'" if self.staging else f"entry '{self.entry}'"


def collision_text(holder: Holder) -> str:
    """Why sharing ``holder``'s place is refused, to follow "entry 'x' " in a message."""
    if holder.entry is None:
        return (
            "would be stored in the secret of the organization key (langfuse.org_key): rotating it would "
            "overwrite the organization key; give it another path"
        )
    return (
        f"would be stored in the same secret as {holder.describe()} (the same server and path, whatever the "
        "store's name): rotating one would revoke the key the other's services use; give each its own path"
    )


@dataclass
class Claims:
    """The places taken so far, and by whom."""

    places: StorePlaces
    _taken: dict[Key, list[tuple[Account, Holder]]] = field(default_factory=dict)

    def holder(self, store: str, path: str) -> Holder | None:
        """Who already holds the secret at ``path`` of ``store``, or its staging place; None: nobody."""
        for place in self.places.places(store, path):
            for key in place.keys:
                for account, holder in self._taken.get(key, []):
                    if _same_account(account, place.account):
                        return holder
        return None

    def take(self, store: str, path: str, entry: str | None) -> None:
        """Record an entry's secret and staging place (``entry`` None: the organization key's secret)."""
        places = self.places.places(store, path)
        if entry is None:
            places = places[:1]  # the organization key is never staged
        for i, place in enumerate(places):
            for key in place.keys:
                self._taken.setdefault(key, []).append((place.account, Holder(entry, staging=i > 0)))
