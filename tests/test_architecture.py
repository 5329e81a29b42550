"""The package architecture of README "Development", checked on the source (issue 20).

Every module of ``flows`` and ``connectors`` is parsed, and every import it makes, module-level or
inside a function, is checked: the layers import one way only, no two modules import each other
(directly or round a longer loop), no module reaches into another module's ``_private`` names,
``import flows`` loads nothing else, and ``flows/`` stays a short list of top-level modules.
Imports under ``if TYPE_CHECKING:`` are exempt: they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The order of README "Development": a module imports only from its own layer or lower ones.
_LEAVES = {"errors", "models", "redact", "audit", "clock", "state", "shown"}
_TOP_FLOWS = {"rotate", "emergency", "reconcile", "report_flow"}
_PACKAGE_LAYER = {
    "config": 1,
    "rotation": 2,
    "prefect": 3,
    "fleet": 4,
    "compliance": 4,
    "trigger": 4,
    "cli": 6,
}


def layer(module: str) -> int:
    """The layer of a ``flows`` module; ``connectors`` modules sit below every one of them."""
    parts = module.split(".")
    if parts[0] == "connectors":
        return -1
    if len(parts) == 1 or parts[1] in _LEAVES:
        return 0
    if parts[1] in _TOP_FLOWS:
        return 5
    return _PACKAGE_LAYER[parts[1]]


@dataclass(frozen=True)
class Import:
    """One import statement's target as the importing module sees it."""

    importer: str
    module: str
    names: tuple[str, ...]
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in ("flows", "connectors"):
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under an ``if TYPE_CHECKING:`` block."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            names = tuple(alias.name for alias in node.names)
            # ``from flows.rotation import lock`` imports the module flows.rotation.lock.
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            for name in submodules:
                found.append(Import(module, f"{target}.{name}", (), node.lineno))
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                found.append(Import(module, target, rest, node.lineno))
    return [i for i in found if i.module.split(".")[0] in ("flows", "connectors")]


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _where(imp: Import) -> str:
    return f"{imp.importer}:{imp.line} imports {imp.module}"


def test_connectors_import_nothing_from_flows() -> None:
    wrong = [_where(i) for i in IMPORTS if i.importer.startswith("connectors") and i.module.startswith("flows")]
    assert wrong == []


def test_every_import_goes_down_the_layers() -> None:
    wrong = [
        _where(i)
        for i in IMPORTS
        if i.importer.startswith("flows") and i.module.startswith("flows") and layer(i.module) > layer(i.importer)
    ]
    assert wrong == []


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        target = imp.module
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != imp.importer:
            graph[imp.importer].add(target)
        # Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``, but a package's own
        # ``__init__`` re-exporting its modules is the one loop allowed: it only ever goes down.
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_function_local_imports_included() -> None:
    assert _cycles(_graph()) == []


def _is_own_package(importer: str, module: str) -> bool:
    """A package's ``__init__`` may re-export the names of its own (private) modules."""
    path = MODULES.get(importer)
    return path is not None and path.name == "__init__.py" and module.startswith(importer + ".")


def test_no_module_imports_another_modules_private_name() -> None:
    wrong = [
        f"{_where(i)} {name}"
        for i in IMPORTS
        for name in i.names
        if name.startswith("_")
        and not name.startswith("__")
        and i.module != i.importer
        and not _is_own_package(i.importer, i.module)
    ]
    wrong += [
        _where(i)
        for i in IMPORTS
        if any(part.startswith("_") and part != "__init__" for part in i.module.split(".")[1:])
        and i.module.rpartition(".")[0] != i.importer.rpartition(".")[0]
        and not _is_own_package(i.importer, i.module)
    ]
    assert wrong == []


def test_importing_flows_loads_no_submodule() -> None:
    code = "import sys, flows; print(sorted(m for m in sys.modules if m.startswith('flows.')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_flows_has_at_most_a_dozen_top_level_modules() -> None:
    top = sorted(p.stem for p in (ROOT / "flows").glob("*.py") if p.stem != "__init__")
    assert len(top) <= 12, top


# Exceptions outside ``flows/errors.py``: only those private to their module, control flow that
# is caught in the module that raises it and never reaches a caller or a command's exit code.
_EXCEPTIONS_ELSEWHERE = {
    "flows.trigger.forwarder._DeadlinePassed",  # a request's read deadline, turned into a 408 answer
    "flows.compliance.inventory._AuthCheckFailed",  # an unreadable auth probe, reported in its entry's row
}


def _is_exception(node: ast.ClassDef) -> bool:
    names = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
    return any(n.endswith(("Error", "Exception")) or n in {"Refused", "CheckFailed"} for n in names) or (
        node.name.endswith(("Error", "Exception"))
    )


def test_every_flows_exception_lives_in_errors() -> None:
    elsewhere = {
        f"{module}.{node.name}"
        for module, path in MODULES.items()
        if module.startswith("flows") and module != "flows.errors"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and _is_exception(node)
    }
    assert elsewhere - _EXCEPTIONS_ELSEWHERE == set()


def test_no_prefect_internals() -> None:
    hits = [
        f"{path.relative_to(ROOT)}"
        for path in MODULES.values()
        if "ConcurrencyContext" in path.read_text() or "prefect._internal" in path.read_text()
    ]
    assert hits == []


def test_only_the_store_registry_names_a_store_kinds_model() -> None:
    """A new store kind is one registration (``flows.config.stores.register_store_kind``): no other
    module branches on a kind's configuration model."""
    from flows.config.stores import STORE_KINDS

    models = {kind.config.__name__ for kind in STORE_KINDS.values()}
    hits = [
        f"{module} names {name}"
        for module, path in MODULES.items()
        if module != "flows.config.stores"
        for node in ast.walk(ast.parse(path.read_text()))
        for name in [node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""]
        if name in models
    ]
    hits += [
        f"{imp.importer} imports {name}"
        for imp in IMPORTS
        for name in imp.names
        if name in models and imp.importer != "flows.config.stores"
    ]
    assert hits == []


PACKAGES = sorted(m for m, p in MODULES.items() if m.startswith("flows.") and p.name == "__init__.py")


def _checked_exports(package: str) -> dict[str, str]:
    """``_EXPORTS`` of a package's ``__init__``, read from its source."""
    tree = ast.parse(MODULES[package].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            exports = ast.literal_eval(node.value)
            assert isinstance(exports, dict)
            return exports
    return {}


def _type_checking_imports(package: str) -> dict[str, str]:
    """What the ``if TYPE_CHECKING:`` block of a package's ``__init__`` imports: name -> module."""
    found: dict[str, str] = {}
    for node in ast.parse(MODULES[package].read_text()).body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                found.update({alias.name: imp.module.removeprefix(package + ".") for alias in imp.names})
    return found


def test_every_package_re_exports_its_public_names_and_each_resolves() -> None:
    import importlib

    wrong: list[str] = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        exports = _checked_exports(package)
        if set(exports) != set(getattr(module, "__all__", ())) or exports != _type_checking_imports(package):
            wrong.append(f"{package}: __all__, _EXPORTS and the TYPE_CHECKING imports disagree")
        for name, submodule in exports.items():
            defined = importlib.import_module(f"{package}.{submodule}")
            if getattr(module, name) is not getattr(defined, name):
                wrong.append(f"{package}.{name} is not {package}.{submodule}.{name}")
    assert PACKAGES and wrong == []


def test_importing_a_package_loads_none_of_its_modules() -> None:
    code = (
        "import importlib, sys\n"
        f"for package in {PACKAGES!r}:\n"
        "    importlib.import_module(package)\n"
        "print(sorted(m for m in sys.modules if m.startswith('flows.') and m not in " + repr(PACKAGES) + "))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
