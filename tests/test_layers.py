"""gc2bench's layers (README "Layout"): a module imports only from its own layer or one below, and no
import cycle exists, counting function-level (lazy) imports as well as module-level ones."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

# Bottom -> top; a prefix names a module or a package (every module under it).
LAYERS = [
    ("gc2bench.errors", "gc2bench.environment", "gc2bench.config"),
    ("gc2bench.layout", "gc2bench.prompting"),
    ("gc2bench.compressors",),
    ("gc2bench.efficiency",),
    ("gc2bench.models",),
    ("gc2bench.results",),
    ("gc2bench.evaluation",),
    ("gc2bench.run", "gc2bench.sweep"),
    ("gc2bench.analysis", "gc2bench.inspection", "gc2bench.bench"),
    ("gc2bench.cli", "gc2bench.entry", "hydra_plugins"),
]


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer of LAYERS: add it")
    return max(matches)[1]


def modules() -> dict[str, Path]:
    found = {}
    for root in ("gc2bench", "hydra_plugins"):
        for path in sorted((REPO / root).rglob("*.py")):
            if "conf" in path.relative_to(REPO).parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(gc2bench / hydra_plugins module, line) of every import in ``path``, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.append((name, node.lineno))
    return sorted(found, key=lambda found: found[1])


def graph() -> dict[str, list[tuple[str, int]]]:
    known = modules()
    return {
        module: [(target, line) for target, line in imports(path, known) if target != module]
        for module, path in known.items()
    }


def test_every_module_is_in_a_layer():
    for module in modules():
        if module not in ("gc2bench", "hydra_plugins"):
            layer_of(module)


def test_no_module_imports_from_a_layer_above_it():
    upward = [
        f"{module}:{line} imports {target} (layer {layer_of(target) + 1} > {layer_of(module) + 1})"
        for module, targets in graph().items()
        if module not in ("gc2bench", "hydra_plugins")
        for target, line in targets
        if target not in ("gc2bench", "hydra_plugins") and layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
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
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle():
    edges = {module: {target for target, _ in targets} for module, targets in graph().items()}
    cycles = find_cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(
    "edges, cycles",
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_find_cycles(edges, cycles):
    assert find_cycles(edges) == cycles


def test_imports_are_read_at_every_depth(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom gc2bench.config import ConfigError\n\ndef f():\n"
        "    from gc2bench import run\n    import gc2bench.results.records as records\n"
    )
    known = {
        "gc2bench": None,
        "gc2bench.config": None,
        "gc2bench.run": None,
        "gc2bench.results": None,
        "gc2bench.results.records": None,
    }
    assert imports(source, known) == [("gc2bench.config", 2), ("gc2bench.run", 5), ("gc2bench.results.records", 6)]
    assert layer_of("gc2bench.results.records") == 5 and layer_of("gc2bench.run") == 7
    assert layer_of("gc2bench.compressors.base") == 2 and layer_of("hydra_plugins.gc2bench_sweeper") == 9


def test_the_readme_states_this_layer_order():
    import re

    text = (REPO / "README.md").read_text().split("## Layout", 1)[1]
    stated = [tuple(re.findall(r"`([\w.]+)`", line)) for line in text.splitlines() if re.match(r"\d+\. `", line)]
    assert stated == [tuple(prefix.removeprefix("gc2bench.") for prefix in layer) for layer in LAYERS]
