"""The package's shape: no import cycles (lazy imports count), no source file over 600 lines, and
every registered name (entry points and built-in tables) loads."""
from __future__ import annotations

import ast
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import mmsa_alignmamba

PACKAGE = Path(mmsa_alignmamba.__file__).parent
MAX_LINES = 600


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """dotted module name -> (file, is a package's __init__)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports, from every import statement anywhere in its
    source (inside functions too): ``from . import x`` counts as importing the submodule x."""
    modules = _modules(root)
    top = root.name
    graph = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == top]
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
                if target.split(".")[0] != top:
                    continue
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_the_cycle_check_finds_lazy_cycles(tmp_path):
    """A cycle closed by an import inside a function, and one through ``from . import``, are found."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "a.py": "from .b import f\n", "b.py": "def f():\n    from . import a\n",
             "c.py": "from .sub import d\n", "sub/__init__.py": "", "sub/d.py": "def g():\n    from .. import c\n"}
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    assert cycles(import_graph(pkg)) == [["toy.a", "toy.b"], ["toy.c", "toy.sub.d"]]


def test_no_source_file_is_over_600_lines():
    sources = [p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".c")]
    assert sources
    long = {str(p.relative_to(PACKAGE)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_entry_point_of_this_distribution_loads():
    dist = metadata.distribution("mmsa-alignmamba")
    points = [ep for ep in dist.entry_points if ep.group.startswith("mmsa.")]
    assert {ep.group for ep in points} >= {"mmsa.models", "mmsa.trainers", "mmsa.configs"}
    for ep in points:
        assert ep.load() is not None, ep


def _registries():
    from mmsa_alignmamba import components
    from mmsa_alignmamba.bench.baselines import BASELINES
    from mmsa_alignmamba.cli.commands import COMMANDS
    from mmsa_alignmamba.model import ABLATIONS
    from mmsa_alignmamba.synthetic import FAMILIES
    return [*components.KINDS.values(), COMMANDS, FAMILIES, ABLATIONS, BASELINES]


@pytest.mark.parametrize("registry", _registries(), ids=lambda r: r.kind.replace(" ", "_"))
def test_every_built_in_table_entry_loads(registry):
    """Each table's entries load (import strings resolve) and are what the table holds: factories
    and commands are callable, families are generator modules."""
    entries = registry.entries()
    assert entries
    for name, entry in entries.items():
        obj = entry.obj
        assert obj is not None, name
        if registry.kind in ("local_alignment", "global_alignment", "missing_protocol", "command"):
            assert callable(obj), name
        if registry.kind == "synthetic task":
            assert callable(obj.structure) and callable(obj.make_split) and isinstance(obj.VERSION, int), name
