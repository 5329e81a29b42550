"""Configuration: the one pydantic model, its field types, store locations, plain-text transport checks,
project templates and the store registry.

The public names below are imported from their module on first use (PEP 562): importing the
package loads none of its modules, so a command pays only for what it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.config.locations import Claims as Claims
    from flows.config.locations import StorePlaces as StorePlaces
    from flows.config.locations import collision_text as collision_text
    from flows.config.model import CONFIG_ENV_VAR as CONFIG_ENV_VAR
    from flows.config.model import AccessLists as AccessLists
    from flows.config.model import AccessPolicy as AccessPolicy
    from flows.config.model import PolicyConfig as PolicyConfig
    from flows.config.model import ProjectEntry as ProjectEntry
    from flows.config.model import ProjectTemplate as ProjectTemplate
    from flows.config.model import RotationConfig as RotationConfig
    from flows.config.model import TracesConfig as TracesConfig
    from flows.config.model import audit_path_for as audit_path_for
    from flows.config.model import load_config as load_config
    from flows.config.model import parse_config as parse_config
    from flows.config.model import resolve_config_path as resolve_config_path
    from flows.config.org import org_key as org_key
    from flows.config.places import Account as Account
    from flows.config.places import Key as Key
    from flows.config.places import Place as Place
    from flows.config.places import server_of as server_of
    from flows.config.stores import STORE_KINDS as STORE_KINDS
    from flows.config.stores import AwsStoreConfig as AwsStoreConfig
    from flows.config.stores import KeyRoute as KeyRoute
    from flows.config.stores import OpenStores as OpenStores
    from flows.config.stores import StoreKind as StoreKind
    from flows.config.stores import StoreSettings as StoreSettings
    from flows.config.stores import VaultStoreConfig as VaultStoreConfig
    from flows.config.stores import build_store as build_store
    from flows.config.stores import on_store_kinds_changed as on_store_kinds_changed
    from flows.config.stores import register_store_kind as register_store_kind
    from flows.config.stores import store_config as store_config
    from flows.config.stores import store_config_type as store_config_type
    from flows.config.stores import store_kinds_text as store_kinds_text
    from flows.config.stores import unregister_store_kind as unregister_store_kind
    from flows.config.templates import Generated as Generated
    from flows.config.templates import entry_for as entry_for
    from flows.config.templates import expand as expand
    from flows.config.templates import organization_projects as organization_projects
    from flows.config.transport import transport_risks as transport_risks
    from flows.config.transport import warn_transport_risks as warn_transport_risks
    from flows.config.types import RESERVED_LAST_SEGMENT as RESERVED_LAST_SEGMENT
    from flows.config.types import Mount as Mount
    from flows.config.types import StorePath as StorePath
    from flows.config.types import StrictModel as StrictModel
    from flows.config.types import Url as Url
    from flows.config.types import path_value_problem as path_value_problem

_EXPORTS = {
    "Claims": "locations",
    "StorePlaces": "locations",
    "collision_text": "locations",
    "AccessLists": "model",
    "AccessPolicy": "model",
    "CONFIG_ENV_VAR": "model",
    "PolicyConfig": "model",
    "ProjectEntry": "model",
    "ProjectTemplate": "model",
    "RotationConfig": "model",
    "TracesConfig": "model",
    "audit_path_for": "model",
    "load_config": "model",
    "parse_config": "model",
    "resolve_config_path": "model",
    "org_key": "org",
    "Account": "places",
    "Key": "places",
    "Place": "places",
    "server_of": "places",
    "AwsStoreConfig": "stores",
    "KeyRoute": "stores",
    "OpenStores": "stores",
    "STORE_KINDS": "stores",
    "StoreKind": "stores",
    "StoreSettings": "stores",
    "VaultStoreConfig": "stores",
    "build_store": "stores",
    "on_store_kinds_changed": "stores",
    "register_store_kind": "stores",
    "store_config": "stores",
    "store_config_type": "stores",
    "store_kinds_text": "stores",
    "unregister_store_kind": "stores",
    "Generated": "templates",
    "entry_for": "templates",
    "expand": "templates",
    "organization_projects": "templates",
    "transport_risks": "transport",
    "warn_transport_risks": "transport",
    "Mount": "types",
    "RESERVED_LAST_SEGMENT": "types",
    "StorePath": "types",
    "StrictModel": "types",
    "Url": "types",
    "path_value_problem": "types",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
