"""No module of ``fairseq_bso/`` imports one from a higher layer (issue 27.5).

The imports are read with ``ast`` from the source files (nothing is imported, nothing registers): every
``import``/``from ... import`` anywhere in a module, inside functions too (a lazy import is a dependency all the
same), and ``importlib.import_module("fairseq_bso....")`` with a literal name.  A module may import from its own
layer or a lower one; same-layer imports must not form a cycle.

The layers, from the package as it is:

0. foundations, no method in them: ``safe_io`` (atomic writers, the writer rule), ``path``, ``fault_points``,
   ``fairseq_fixes/`` (patches to fairseq and the batching task mixins).
1. the methods' machinery, nothing registered with fairseq: data pipelines (``prep``, ``evaluation``,
   ``constraints.parsing``, each with a thin ``main``), ``bso.costs``/``search``/``decoding``,
   ``constraints.base``, ``distill.greedy``/``corpus``, ``prune.masks``.
2. fairseq components, registered or mixed into registered tasks: criteria (``bso.criterion``,
   ``distill.word_kd``), the optimizer (``bso.optim``), tasks and task mixins (``constraints.task``,
   ``distill.seq_kd``, ``distill.lean_greedy_task``, ``prune.tasks``).
3. entry points: the package ``fairseq_bso/__init__.py`` (it registers everything) and ``prune.cli`` (it
   imports the plugin to read any task's checkpoint).

A subpackage's ``__init__`` runs whenever one of its modules is imported, so its layer is the lowest of its
modules' (its own imports are held to that).  The top package is the exception: Python runs
``fairseq_bso/__init__.py`` before any of its modules, which is how fairseq's ``--user-dir`` loads the plugin;
what is checked is that no module *names* it (or anything above its own layer).  A module missing from
``LAYERS`` fails the test: a new module gets a layer when it is added.
"""

import ast
import os
from typing import Dict, List, Optional, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "fairseq_bso"

LAYER_NAMES = {0: "foundations", 1: "method machinery", 2: "fairseq components", 3: "entry points"}

LAYERS = {
    "fairseq_bso.safe_io": 0,
    "fairseq_bso.path": 0,
    "fairseq_bso.fault_points": 0,
    "fairseq_bso.fairseq_fixes.batching": 0,
    "fairseq_bso.fairseq_fixes.checkpoint_files": 0,
    "fairseq_bso.fairseq_fixes.checkpoint_safety": 0,
    "fairseq_bso.fairseq_fixes.nonfinite": 0,
    "fairseq_bso.prep": 1,
    "fairseq_bso.evaluation": 1,
    "fairseq_bso.constraints.parsing": 1,
    "fairseq_bso.bso.costs": 1,
    "fairseq_bso.bso.search": 1,
    "fairseq_bso.bso.decoding": 1,
    "fairseq_bso.constraints.base": 1,
    "fairseq_bso.distill.greedy": 1,
    "fairseq_bso.distill.corpus": 1,
    "fairseq_bso.prune.masks": 1,
    "fairseq_bso.bso.criterion": 2,
    "fairseq_bso.bso.optim": 2,
    "fairseq_bso.distill.word_kd": 2,
    "fairseq_bso.distill.lean_greedy_task": 2,
    "fairseq_bso.distill.seq_kd": 2,
    "fairseq_bso.constraints.task": 2,
    "fairseq_bso.prune.tasks": 2,
    "fairseq_bso": 3,
    "fairseq_bso.prune.cli": 3,
}


def package_modules(root: str, package: str) -> Dict[str, Tuple[str, bool]]:
    """{dotted module name: (file, is a package __init__)} for every ``.py`` file below ``root/package``."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(folder, root).split(os.sep)
        for name in sorted(files):
            if name.endswith(".py"):
                dotted = ".".join(rel if name == "__init__.py" else rel + [name[:-3]])
                modules[dotted] = (os.path.join(folder, name), name == "__init__.py")
    return modules


def imports_of(path: str, module: str, is_package: bool, known: Set[str], package: str) -> List[Tuple[int, str]]:
    """(line, imported module of ``package``) for every import in the file; ``from X import name`` counts as an
    import of ``X.name`` when that is a module, of ``X`` otherwise."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    here = module if is_package else module.rpartition(".")[0]
    found = []

    def add(line, target):
        if target == package or target.startswith(package + "."):
            found.append((line, target))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(node.lineno, sub if sub in known else base)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                add(node.lineno, node.args[0].value)
    return found


def layer_violations(root: str, package: str, layers: Dict[str, int]) -> List[str]:
    """Every import of a higher layer, a module without a layer, an import of no module of the package, and
    every cycle among same-layer imports, each as one line naming the file, the line and the two modules."""
    modules = package_modules(root, package)
    known = set(modules)
    problems = [f"{os.path.relpath(modules[m][0], root)}: module {m} has no layer: add it to LAYERS in "
                f"tests/test_layering.py" for m in sorted(known) if m not in layers and not modules[m][1]]
    level: Dict[str, Optional[int]] = {m: layers.get(m) for m in known}
    for m, (_, is_package) in modules.items():  # a subpackage __init__ runs before any of its modules
        if is_package and m != package:
            inner = [layers[c] for c in known if c.startswith(m + ".") and c in layers]
            level[m] = min(inner) if inner else layers.get(m)

    def describe(m):
        return f"{m} (layer {level[m]}: {LAYER_NAMES.get(level[m], '?')})"

    same_layer: Dict[str, Set[str]] = {m: set() for m in known}
    for m in sorted(known):
        path, is_package = modules[m]
        if level[m] is None:
            continue
        for line, target in imports_of(path, m, is_package, known, package):
            where = f"{os.path.relpath(path, root)}:{line}"
            if target not in known:
                problems.append(f"{where}: {m} imports {target}, which is no module of {package}")
            elif target == m:
                continue
            elif level[target] is None:
                continue  # reported above as a module without a layer
            elif level[target] > level[m]:
                problems.append(f"{where}: {describe(m)} imports {describe(target)}, a higher layer")
            elif level[target] == level[m] and not m.startswith(target + "."):
                same_layer[m].add(target)

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(same_layer[node]):
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles: Dict[Tuple[str, ...], List[str]] = {}
    for c in filter(None, map(cycle_from, sorted(known))):
        cycles.setdefault(tuple(sorted(c[:-1])), c)
    problems += [f"import cycle within layer {level[c[0]]}: {' -> '.join(c)}" for c in cycles.values()]
    return problems


def test_no_module_imports_from_a_higher_layer():
    problems = layer_violations(ROOT, PACKAGE, LAYERS)
    assert not problems, "\n".join(problems)


def test_every_layered_module_exists():
    """LAYERS names only modules that are there (a renamed module does not keep a stale entry)."""
    stale = sorted(set(LAYERS) - set(package_modules(ROOT, PACKAGE)))
    assert not stale, f"LAYERS in tests/test_layering.py names modules that do not exist: {stale}"


def _write(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


@pytest.mark.parametrize("source, expected", [
    ("from ..top import x\n", "pkg/low/a.py:1: pkg.low.a (layer 0: foundations) imports pkg.top (layer 1: method "
                              "machinery), a higher layer"),
    ("from pkg import top\n", "pkg/low/a.py:1: pkg.low.a (layer 0: foundations) imports pkg.top (layer 1"),
    ("import pkg.top as t\n", "pkg/low/a.py:1: pkg.low.a (layer 0: foundations) imports pkg.top (layer 1"),
    ("def f():\n    from .. import top\n", "pkg/low/a.py:2: pkg.low.a (layer 0: foundations) imports pkg.top"),
    ("import importlib\nM = importlib.import_module('pkg.top')\n", "pkg/low/a.py:2: pkg.low.a (layer 0"),
    ("from .. import nowhere\n", "pkg/low/a.py:1: pkg.low.a (layer 0: foundations) imports pkg (layer 3: entry "
                                  "points), a higher layer"),  # the top package named (not a module of it)
    ("from .b import y\n", "import cycle within layer 0: pkg.low.a -> pkg.low.b -> pkg.low.a"),
], ids=["relative", "from-package", "import-as", "lazy", "import_module", "top-package", "cycle"])
def test_the_check_finds_upward_imports_and_cycles(tmp_path, source, expected):
    """The checker on a small package with one bad import each: it names the file, the line and both modules."""
    _write(str(tmp_path), {"pkg/__init__.py": "from . import top\n", "pkg/top.py": "X = 1\n",
                           "pkg/low/__init__.py": "", "pkg/low/a.py": source, "pkg/low/b.py": "from . import a\n"})
    layers = {"pkg": 3, "pkg.top": 1, "pkg.low.a": 0, "pkg.low.b": 0}
    problems = layer_violations(str(tmp_path), "pkg", layers)
    assert any(expected in p for p in problems), f"expected a problem containing {expected!r}, got {problems}"
    clean = layer_violations(str(tmp_path), "pkg", {**layers, "pkg.low.a": 3, "pkg.low.b": 3})
    if "cycle" not in expected:  # the same imports are allowed from a layer at least as high
        assert not [p for p in clean if "higher layer" in p], clean


def test_the_check_names_a_module_without_a_layer(tmp_path):
    _write(str(tmp_path), {"pkg/__init__.py": "", "pkg/new.py": "X = 1\n"})
    problems = layer_violations(str(tmp_path), "pkg", {"pkg": 3})
    assert problems == ["pkg/new.py: module pkg.new has no layer: add it to LAYERS in "
                        "tests/test_layering.py"], problems
