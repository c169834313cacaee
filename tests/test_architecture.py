"""The package's layers, read from its imports (ast): each layer imports only layers below it, siblings of one layer
never import each other, and no import cycle exists, counting imports placed inside functions (an import moved into
a function to dodge a cycle is still a cycle). docs/architecture.md explains the rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recbole_ext"
PROPERTIES = PACKAGE.parent / "properties" / "__init__.py"  # ships as recbole_ext.properties
# rank, layer, module prefixes: an arrow may go to a lower rank or stay inside its own layer (acyclic)
LAYERS = [
    (0, "foundation", ("recbole_ext.compat", "recbole_ext.files", "recbole_ext.cpu", "recbole_ext.checkpoints",
                       "recbole_ext.properties")),
    (1, "data", ("recbole_ext.data",)),
    (1, "evaluation", ("recbole_ext.evaluation",)),
    (1, "model", ("recbole_ext.model",)),
    (2, "trainer", ("recbole_ext.trainer",)),
    (3, "run path", ("recbole_ext.registry", "recbole_ext.validation", "recbole_ext.keydoc", "recbole_ext.quick_start")),
    (4, "launchers", ("recbole_ext.cli", "recbole_ext.tune", "recbole_ext.distributed", "recbole_ext.inference")),
]
API = "recbole_ext"  # the package's __init__: the public API, above every layer


def module_files() -> dict[str, Path]:
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    files["recbole_ext.properties"] = PROPERTIES
    return files


def _target(module: str, package: str, node: ast.ImportFrom, alias: ast.alias, known: set[str]) -> str:
    base = node.module or ""
    if node.level:  # relative: from .x import y
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    sub = f"{base}.{alias.name}"
    return sub if sub in known else base


def imports(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported recbole_ext module: line}, top-level and function-level imports alike."""
    known, graph = set(files), {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [_target(module, package, node, a, known) for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:  # import recbole_ext.data.x.y -> the module that exists
                    target = target.rpartition(".")[0]
                if target.startswith(API) and target != module:
                    edges.setdefault(target, node.lineno)
    return graph


def layer_of(module: str) -> tuple[int, str]:
    if module == API:
        return 5, "api"
    for rank, name, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank, name
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__} and to docs/architecture.md")


def forbidden_arrows(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module, edges in graph.items():
        rank, layer = layer_of(module)
        for target, line in edges.items():
            target_rank, target_layer = layer_of(target)
            if target_rank > rank or (target_rank == rank and target_layer != layer):
                bad.append(f"{module}:{line} imports {target} ({layer} -> {target_layer})")
    return bad


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each a list of modules."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return imports(module_files())


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_arrow_points_up_or_sideways(graph):
    assert forbidden_arrows(graph) == []


def test_no_import_cycle_even_through_function_level_imports(graph):
    assert cycles(graph) == []


def test_models_import_neither_data_nor_trainer(graph):
    for module, edges in graph.items():
        if module.startswith("recbole_ext.model"):
            assert not [t for t in edges if t.startswith(("recbole_ext.data", "recbole_ext.trainer"))], module


def test_the_checker_catches_an_up_arrow_a_sideways_arrow_and_a_dodged_cycle():
    fake = {"recbole_ext.trainer.base": {"recbole_ext.distributed": 3},  # trainer -> launcher
            "recbole_ext.model.marif": {"recbole_ext.data.history": 5},  # model -> data
            "recbole_ext.data.protocol": {"recbole_ext.data.sequential": 7},  # inside a function, say
            "recbole_ext.data.sequential": {"recbole_ext.data.protocol": 9},
            "recbole_ext.distributed": {}, "recbole_ext.data.history": {}}
    bad = forbidden_arrows(fake)
    assert any("trainer.base:3 imports recbole_ext.distributed (trainer -> launchers)" in b for b in bad)
    assert any("model.marif:5 imports recbole_ext.data.history (model -> data)" in b for b in bad)
    assert cycles(fake) == [["recbole_ext.data.protocol", "recbole_ext.data.sequential"]]


def test_function_level_imports_are_read(tmp_path):
    source = tmp_path / "recbole_ext"
    (source / "data").mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "data" / "__init__.py").write_text("")
    (source / "data" / "a.py").write_text("def f():\n    from recbole_ext.data import b\n")
    (source / "data" / "b.py").write_text("from recbole_ext.data.a import f\n")
    files = {"recbole_ext.data.a": source / "data" / "a.py", "recbole_ext.data.b": source / "data" / "b.py",
             "recbole_ext.data": source / "data" / "__init__.py"}
    assert cycles(imports(files)) == [["recbole_ext.data.a", "recbole_ext.data.b"]]
