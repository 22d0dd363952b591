"""The scorer's rooms: imports point down only, no cycles (lazy or type-only ones included), and
nothing heavy. Read from the source with `ast`, so an import inside a function counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCORER = ROOT / "scorer"
HEAVY = {"tensorflow", "keras", "tf_keras", "sklearn", "scipy", "matplotlib", "torch", "trainer"}

# Lower layers never import higher ones. Inside a subpackage its modules may import each other
# (cycles are caught separately); the package's face (__init__) re-exports them.
LAYERS = [
    {"scorer", "scorer.files", "scorer.s3client", "scorer.process_pool",  # leaves everyone shares
     "scorer.stopping"},
    {"scorer.images"},
    {"scorer.sources", "scorer.report", "scorer.bundle", "scorer.numbers"},
    {"scorer.costs"},  # what inputs cost: how windows and parts are cut
    {"scorer.workers"},
    {"scorer.pipeline"},
    {"scorer.outputs"},
    {"scorer.job", "scorer.review", "scorer.compare"},  # review: --review-dir; compare: 2 bundles
    {"scorer.s3_jobs", "scorer.cli", "scorer.compare_cli"},
    {"scorer.batch_jobs"},  # scale-out prefix jobs: batches -> parts -> merge (uses s3_jobs)
    {"scorer.handler", "scorer.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SCORER.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Every scorer module `path` imports, anywhere in the file. `from pkg import name` counts as
    an import of pkg.name when that is a module, else of pkg."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {name for name in found if name in known}


def all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(path, set(found)) - {name} for name, path in found.items()}


def layer_of(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members if m != "scorer") \
                or module in members:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def cycle_from(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path of module names, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_not_even_lazy_or_type_only_ones():
    assert cycle_from(graph()) is None


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down_only(module):
    rank = layer_of(module)
    for target in graph()[module]:
        same_package = target.rsplit(".", 1)[0] == module.rsplit(".", 1)[0] or \
            target.startswith(module + ".")
        assert layer_of(target) < rank or (same_package and layer_of(target) == rank), \
            f"{module} (layer {rank}) imports {target} (layer {layer_of(target)})"


def test_subpackages_do_not_import_their_own_face():
    """scorer.images.batch importing scorer.images would run the package's __init__, which
    imports scorer.images.batch: a cycle hidden behind a partly initialised module."""
    for name, targets in graph().items():
        package = name.rsplit(".", 1)[0]
        if package != "scorer" and modules()[name].name != "__init__.py":
            assert package not in targets, f"{name} imports its own package {package}"


@pytest.mark.parametrize("module", sorted(modules()))
def test_scorer_source_names_no_heavy_library(module):
    assert not all_imports(modules()[module]) & HEAVY


def test_importing_every_scorer_module_loads_nothing_heavy():
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(m for m in modules() if m not in ('scorer.__main__',))!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
