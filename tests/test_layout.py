"""The package's layers (docs/layout.md): every module imports only from its own layer or those to
its left. Package facades (``__init__``) and command entry points (``__main__``) are not checked;
no module of the package imports a ``__main__``. No import cycle, not even one of type-only imports;
an import inside a function says why on its line or just above (``# why: ...``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tall_jax"

# Left to right; a module takes the layer of its longest listed prefix.
LAYERS = (
    ("files", "cli", "pages", "plots", "checkpoint", "train_state", "flags", "tensorboard"),  # leaf utilities: no tall_jax import but each other
    ("datasets",),
    ("protocol",),
    ("batching",),
    ("vae", "gate", "head", "weights", "precision", "metrics", "ranking", "objective", "optim",
     "sharding", "configs"),  # model maths and the configuration it reads
    ("state", "steps", "evaluation", "stopping"),
    ("fit", "fit_seeds", "baselines", "closed"),  # training loops, the local baselines' training
    ("experiment", "blend", "baselines.experiment", "closed.experiment", "results", "identity", "paper",
     "two_tower"),  # experiments
    ("models",),  # the model table: every family's config and trainer, a run resolved once
    ("run_records", "report", "table2", "niche", "study", "two_tower.report", "two_tower.study", "two_tower.study_page",
     "two_tower.plots"),  # pages and studies built from experiments
    ("commands",),  # the command-line programs
)


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    if rank is None:
        raise AssertionError(f"tall_jax.{module} has no layer in tests/test_layout.py: place it")
    return rank


def _is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports(source: str, module: str, is_package: bool = False,
            type_checking: bool = False) -> list[tuple[int, str]]:
    """(line, module inside tall_jax) of every runtime import in the ``source`` of ``module``, lazy
    ones included, ``if TYPE_CHECKING:`` ones only with ``type_checking``; ``from pkg import sub``
    counts as an import of the submodule ``pkg.sub``."""
    tree = ast.parse(source)
    skip = set() if type_checking else _type_checking_lines(tree)
    here = module.split(".")
    package = here if is_package else here[:-1]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] + ([node.module] if node.module else [])
                base_name = ".".join(["tall_jax", *base])
            else:
                base_name = node.module or ""
            inside = base_name.startswith("tall_jax.") or base_name == "tall_jax"
            names = [f"{base_name}.{a.name}" if inside and _is_module(f"{base_name}.{a.name}"[len("tall_jax."):])
                     else base_name for a in node.names]
        else:
            continue
        found += [(node.lineno, n[len("tall_jax."):]) for n in names if n.startswith("tall_jax.")]
    return sorted(found)


def _imports(path: Path, type_checking: bool = False) -> list[tuple[int, str]]:
    return imports(path.read_text(), _module(path), path.name == "__init__.py", type_checking)


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module(p))
def test_a_module_imports_only_from_its_left(path):
    mine = _layer(_module(path))
    wrong = [f"line {line}: {name} (layer {_layer(name)})" for line, name in _imports(path)
             if _layer(name) > mine]
    assert not wrong, f"tall_jax.{_module(path)} (layer {mine}) imports to its right: {'; '.join(wrong)}"


def test_nothing_imports_an_entry_point():
    users = [f"{_module(p)} line {line}" for p in PACKAGE.rglob("*.py") for line, name in _imports(p)
             if name.endswith("__main__")]
    assert not users, users


def test_the_checker_sees_every_kind_of_import():
    source = ("from tall_jax import fit\nfrom . import batching\nimport tall_jax.steps\n"
              "if TYPE_CHECKING:\n    from tall_jax.report import RunRecord\n"
              "def f():\n    from tall_jax.baselines import local\n    from .datasets.own import x\n")
    assert imports(source, "protocol") == [(1, "fit"), (2, "batching"), (3, "steps"),
                                           (7, "baselines.local"), (8, "datasets.own")]
    assert _layer("fit") > _layer("protocol")  # so the first import would fail the layout test
    assert _layer("baselines.experiment") > _layer("baselines.local") > _layer("steps")


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> the modules it imports) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_cycle():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module(path).removesuffix(".__init__")
        graph[name] = {m for _, m in _imports(path, type_checking=True) if m != name}
    found = cycle(graph)
    assert found is None, "import cycle (type-only imports count): " + " -> ".join(found)


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def unexplained_lazy_imports(source: str) -> list[int]:
    """Lines of the imports inside a function that no ``# why:`` comment explains: on the import's
    own line, or in the comment lines just above it or above the run of imports it belongs to."""
    lines = source.splitlines()

    def reason_above(lineno: int) -> bool:
        i = lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            if "why:" in lines[i]:
                return True
            i -= 1
        return False

    bad = set()
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                explained = False
                for stmt in stmts if isinstance(stmts, list) else ():  # an IfExp's body is no list
                    if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        explained = False
                        continue
                    explained = explained or "why:" in lines[stmt.lineno - 1] or reason_above(stmt.lineno)
                    if not explained:
                        bad.add(stmt.lineno)
    return sorted(bad)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: _module(p))
def test_an_import_inside_a_function_says_why(path):
    bad = unexplained_lazy_imports(path.read_text())
    assert not bad, (f"tall_jax.{_module(path)}: import(s) inside a function at line(s) {bad} without a "
                     "'# why: ...' comment on the line or just above; move them to the top of the module")


def test_the_lazy_import_checker():
    source = ("import os\n"
              "def f():\n    import json\n"
              "def g():\n    # why: heavy\n    import numpy\n    import scipy\n    x = 1\n    import re\n"
              "def h():\n    import csv  # why: optional\n"
              "class C:\n    def m(self):\n        if True:\n            from tall_jax import fit\n")
    assert unexplained_lazy_imports(source) == [3, 9, 15]
