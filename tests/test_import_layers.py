"""vitlab's import order: ``cli -> study -> train/eval -> peft, losses -> augment, data, models -> checkpoint,
metrics``.

Lower layers never import upper ones, not even inside a function; packages of one layer do not import each other;
no module of vitlab takes part in an import cycle. ``vitlab.errors`` and ``vitlab`` itself (``__init__``, which
imports ``vitlab.models`` to register the timm models) are the base every module may import. The scan reads every
``import`` statement of ``src/vitlab`` with ``ast`` (module level and function level alike).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Rank of each top-level part of vitlab; a module may import only its own package and lower ranks.
LAYERS: dict[str, int] = {
    "errors": 0, "version": 0,
    "checkpoint": 1, "metrics": 1, "checks": 1, "yaml_loader": 1,
    "augment": 2, "data": 2, "models": 2,
    "peft": 3, "losses": 3,
    "train": 4, "eval": 4,
    "study": 5,
    "cli": 6, "__main__": 7,
}


def module_name(path: Path, root: Path) -> str:
    """``root/vitlab/peft/io.py`` -> ``vitlab.peft.io``; a package's ``__init__.py`` -> the package name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> list[str]:
    """The vitlab modules an import statement names (``from pkg import sub`` names ``pkg.sub`` when it is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "vitlab"]
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != "vitlab":
        return []
    targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    return targets if len(targets) == len(node.names) else [*targets, base]


def import_graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    """``{module: [(imported vitlab module, line), ...]}`` for every ``.py`` file under ``root/vitlab``."""
    files = {module_name(p, root): p for p in sorted((root / "vitlab").rglob("*.py"))}
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges += [(target, node.lineno) for target in resolve(node, name, path.name == "__init__.py", known)]
        graph[name] = edges
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vitlab"


def layer_violations(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """``importer:line -> imported`` for each import that goes up a layer or sideways to another package."""
    problems = []
    for importer, edges in graph.items():
        if importer == "vitlab":  # the package itself imports vitlab.models to register the timm models
            continue
        own = _part(importer)
        if own not in LAYERS:
            problems.append(f"{importer}: not in LAYERS; add its package to tests/test_import_layers.py")
            continue
        for target, line in edges:
            part = _part(target)
            if part in ("vitlab", own):
                continue
            if part not in LAYERS or LAYERS[part] >= LAYERS[own]:
                problems.append(f"{importer}:{line} -> {target} ({own} may import only lower layers)")
    return problems


def import_cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each an import cycle), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_scanner_finds_upward_sideways_and_function_level_imports(tmp_path):
    root = _write(tmp_path, {
        "vitlab/__init__.py": "from vitlab import models\n",
        "vitlab/errors.py": "",
        "vitlab/models/__init__.py": "from vitlab.errors import VitlabError\n",
        "vitlab/checkpoint.py": "def load():\n    from vitlab.peft import export\n",
        "vitlab/peft/__init__.py": "from .export import x\n",
        "vitlab/peft/export.py": "from ..checkpoint import load\nfrom vitlab import models\n",
        "vitlab/losses/__init__.py": "import vitlab.peft.export\n",
    })
    graph = import_graph(root)
    assert ("vitlab.checkpoint", 1) in graph["vitlab.peft.export"]  # relative import resolved
    assert ("vitlab.models", 2) in graph["vitlab.peft.export"]  # `from vitlab import <module>`
    assert layer_violations(graph) == [
        "vitlab.checkpoint:2 -> vitlab.peft.export (checkpoint may import only lower layers)",
        "vitlab.losses:1 -> vitlab.peft.export (losses may import only lower layers)",
    ]
    assert import_cycles(graph) == [["vitlab.checkpoint", "vitlab.peft.export"]]


def test_no_module_imports_an_upper_layer_or_a_sibling_package():
    problems = layer_violations(import_graph(SRC))
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_no_import_cycle():
    cycles = import_cycles(import_graph(SRC))
    assert not cycles, "import cycles (break them by moving the shared code down):\n" + "\n".join(map(str, cycles))
