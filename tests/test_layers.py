"""The package's layering: a subpackage imports only from subpackages below it in the data flow, and no two
modules import each other (directly or round a loop). Read from the source, so nothing is imported."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import wsi_pipeline

PACKAGE = Path(wsi_pipeline.__file__).parent
# lowest first; a subpackage may import from those of a lower rank (and within itself)
RANKS = {
    "core": 0,
    "slide": 1,
    "datasets": 1,
    "tiling": 2,
    "model": 3,
    "store": 4,
    "findings": 5,
    "scoring": 6,
    "evaluation": 7,
    "training": 8,
    "synthetic": 9,
    "cli": 10,
    "napari": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, package: str) -> set[str]:
    """Every ``wsi_pipeline`` module or name a module's source imports, anywhere in it (module level or in
    functions); relative imports are resolved against ``package``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # "from pkg import module"
    return {name for name in found if name.startswith("wsi_pipeline.")}


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (the lazy top-level ``wsi_pipeline`` left out)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = (imported_names(path.read_text(), package) & set(files)) - {name, "wsi_pipeline"}
    del graph["wsi_pipeline"]
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    def rank(module: str) -> int:
        return RANKS[module.split(".")[1]]

    return sorted(
        f"{name} → {target}"
        for name, imports in graph.items()
        for target in imports
        if rank(target) > rank(name)
    )


def test_every_subpackage_has_a_rank():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(RANKS)


def test_imports_point_down_the_data_flow():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {' → '.join(error.args[1])}")


def test_the_walk_finds_imports_in_functions_and_relative_ones():
    source = "from .grid import PatchGrid\n\ndef f():\n    from wsi_pipeline.scoring import api\n"
    names = imported_names(source, "wsi_pipeline.tiling")
    assert {"wsi_pipeline.tiling.grid", "wsi_pipeline.scoring.api"} <= names
    graph = {"wsi_pipeline.tiling.grid": {"wsi_pipeline.scoring.api"}, "wsi_pipeline.scoring.api": set()}
    assert upward_imports(graph) == ["wsi_pipeline.tiling.grid → wsi_pipeline.scoring.api"]
