# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The package's import graph, read from the source with `ast`: no cycle between modules, no private name (leading
underscore) imported from another module, and rooms that only import from the rooms below them.

Imports inside functions count: they are dependencies like any other, made lazy for speed. Imports under
`if TYPE_CHECKING:` never run, so they are left out of the cycle check (they are still checked for private names).
Importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py` too, so an import is an edge to every package on the way
(but the importing module's own packages, which have run before it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "peft_slider"

# The rooms, bottom to top: a room imports from the rooms before it, never from one after it (see ARCHITECTURE.md).
ROOMS = ("utils", "targeting", "training", "formats", "inference", "evaluation", "testing", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, runtime: bool = True):
    """Yields (node, runtime) for every import statement, `runtime` False under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, runtime
        elif isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), runtime=False)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), runtime)
        else:
            yield from _imports(node, runtime)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _ancestors(target: str) -> list[str]:
    parts = target.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _scan():
    """(edges, private): module -> set of the modules it imports at runtime; and every private import found."""
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    private = []
    for module, path in MODULES.items():
        for node, runtime in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            else:
                source = _resolve(module, node)
                targets = []
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    # `from package import module` imports a module; anything else is a name from `source`.
                    targets.append((submodule, None) if submodule in MODULES else (source, alias.name))
            for target, name in targets:
                if target.split(".")[0] != "peft_slider":
                    continue
                hidden = [part for part in target.split(".") if part.startswith("_") and not part.startswith("__")]
                if hidden or (name is not None and name.startswith("_") and not name.startswith("__")):
                    private.append(f"{module} imports {name or ''} from {target}".replace("  ", " "))
                if runtime:
                    # A module's own packages are imported before it runs: an import of them is no new edge.
                    own = set(_ancestors(module))
                    edges[module].update(t for t in _ancestors(target) if t in MODULES and t not in own)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def test_every_module_is_read():
    assert len(MODULES) > 20
    assert set(ROOMS) <= {_room(name) for name in MODULES}


def test_no_import_cycle_between_modules():
    edges, _ = _scan()
    assert _cycles(edges) == []


def test_no_private_name_is_imported_across_modules():
    _, private = _scan()
    assert private == []


def test_rooms_import_only_from_rooms_below():
    edges, _ = _scan()
    backwards = set()
    for module, targets in edges.items():
        for target in targets:
            source_room, target_room = _room(module), _room(target)
            if source_room is None or target_room is None:
                continue  # the package's front door (`peft_slider/__init__.py`, `__main__.py`) sits above every room
            if ROOMS.index(target_room) > ROOMS.index(source_room):
                backwards.add((source_room, target_room))
    assert backwards == set()


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"c"}}, [["a", "b"]]),
    ],
)
def test_cycle_finder(edges, expected):
    assert _cycles(edges) == expected


# --------------------------------------------------------------------------------------------------- re-exports


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_reexports_the_public_names_of_its_modules(room):
    import importlib

    package = importlib.import_module(f"peft_slider.{room}")
    assert package.__all__ == sorted(package.__all__)
    expected = set()
    for name in MODULES:
        if name.startswith(f"peft_slider.{room}.") and not name.endswith("__main__"):
            expected.update(importlib.import_module(name).__all__)
    assert set(package.__all__) == expected
    for name in package.__all__:
        assert getattr(package, name) is not None


def test_the_top_level_holds_the_quick_paths_and_imports_nothing_heavy():
    import subprocess
    import sys

    import peft_slider

    assert peft_slider.__all__ == sorted(peft_slider.__all__)
    assert len(peft_slider.__all__) <= 16
    for name in peft_slider.__all__:
        value = getattr(peft_slider, name)
        rooms = [getattr(__import__(f"peft_slider.{room}", fromlist=["x"]), name, None) for room in ROOMS]
        assert value in rooms, name  # the same object as in its room
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        peft_slider.nothing  # noqa: B018
    code = "import sys, peft_slider, peft_slider.cli; print(sorted({'torch', 'peft', 'diffusers'} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    out = run.stdout
    assert out.strip() == "[]"
