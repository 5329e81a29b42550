"""The declared dependencies match what the code uses and what was tested (pyproject.toml)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project: dict[str, object] = data["project"]
    return project


def _runtime() -> dict[str, Requirement]:
    requirements = [Requirement(text) for text in _project()["dependencies"]]  # type: ignore[attr-defined]
    return {req.name: req for req in requirements}


def _extra(name: str) -> dict[str, Requirement]:
    extras: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    return {req.name: req for req in (Requirement(text) for text in extras[name])}


def _lowest(specifier: SpecifierSet) -> Version:
    floors = [Version(spec.version) for spec in specifier if spec.operator in (">=", "==", "~=")]
    assert floors, f"no lower bound in {specifier}"
    return max(floors)


def test_opentelemetry_proto_is_a_development_dependency_only() -> None:
    assert "opentelemetry-proto" not in _runtime()
    assert "opentelemetry-proto" in _extra("dev")


def test_the_service_never_imports_the_otlp_protobuf_package() -> None:
    code = (
        "import sys, flows.cli.main, flows.rotate, flows.emergency, flows.reconcile, connectors.langfuse, "
        "connectors.vault, connectors.aws_secrets, connectors.notify, connectors.consumers\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.proto', 'google.protobuf'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_pydantic_floor_has_validate_by_name() -> None:
    assert _lowest(_runtime()["pydantic"].specifier) >= Version("2.11.5")


def test_apprise_floor_is_at_least_prefects() -> None:
    prefect_requires = [Requirement(text) for text in importlib.metadata.requires("prefect") or []]
    prefect_apprise = next(req for req in prefect_requires if req.name == "apprise" and not req.marker)
    assert _lowest(_runtime()["apprise"].specifier) >= _lowest(prefect_apprise.specifier)


def test_prefect_is_pinned_to_the_tested_minor_series() -> None:
    specifier = _runtime()["prefect"].specifier
    installed = Version(importlib.metadata.version("prefect"))
    assert installed in specifier
    upper = [Version(spec.version) for spec in specifier if spec.operator == "<"]
    assert upper and min(upper) <= Version(f"{installed.major}.{installed.minor + 1}")


def test_no_module_relies_on_prefect_internals() -> None:
    """The lock and every other Prefect call use the public REST API (``connectors.prefect_api``)."""
    root = Path(__file__).resolve().parent.parent
    sources = [*root.joinpath("flows").rglob("*.py"), *root.joinpath("connectors").rglob("*.py")]
    offenders = [
        str(path.relative_to(root))
        for path in sources
        if "prefect._internal" in path.read_text() or "ConcurrencyContext" in path.read_text()
    ]
    assert offenders == []
