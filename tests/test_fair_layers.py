"""The package's floor plan, read from the code: every import points down a layer, no two modules import each
other (directly or around a circle), and the math in core/ imports only torch, the standard library and the
settings / errors modules (docs/architecture.md, "Layers")."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "openrlhf_fair"

# Lowest first; a module may import its own layer and any layer listed before it. The CPU backend and the
# fairness features are two independent users of host/ (neither imports the other).
LAYERS = [
    {"openrlhf_fair", "errors"},
    {"settings"},
    {"core"},
    {"host"},
    {"features", "cpu_backend"},
    {"fixtures", "checks"},
    {"report"},
    {"demo", "debias"},
    {"cli", "install"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def layer_of(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    for index, layer in enumerate(LAYERS):
        if key in layer:
            return index
    raise AssertionError(f"{name}: in no layer of LAYERS (add its folder there and to docs/architecture.md)")


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_import_points_down_or_across_its_own_layer():
    up = [f"{name} -> {other}" for name, others in graph().items() for other in others
          if layer_of(other) > layer_of(name)]
    assert up == []


def test_no_import_circle():
    edges = graph()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert circles == []


def test_core_imports_only_torch_the_standard_library_settings_and_errors():
    allowed_package = {"openrlhf_fair.settings", "openrlhf_fair.errors"}
    bad = []
    for path in sorted((PACKAGE / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                top = name.split(".")[0]
                if name.startswith("openrlhf_fair"):
                    if name not in allowed_package and not name.startswith("openrlhf_fair.core"):
                        bad.append(f"{path.name}: {name}")
                elif top not in sys.stdlib_module_names and top not in ("torch", "__future__"):
                    bad.append(f"{path.name}: {name}")
    assert bad == []


def test_the_top_of_the_package_holds_at_most_six_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 6, top


@pytest.mark.parametrize("planted", ["openrlhf_fair.cli.main", "openrlhf"])
def test_the_checks_see_a_planted_violation(tmp_path, monkeypatch, planted):
    """The checks above can fail: a core module importing the CLI (up a floor) or OpenRLHF is caught."""
    fake = tmp_path / "openrlhf_fair"
    for path in PACKAGE.rglob("*.py"):
        target = fake / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (fake / "core" / "planted.py").write_text(f"def f():\n    import {planted}\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError):
        test_core_imports_only_torch_the_standard_library_settings_and_errors()
    if planted.startswith("openrlhf_fair"):
        with pytest.raises(AssertionError):
            test_every_import_points_down_or_across_its_own_layer()
