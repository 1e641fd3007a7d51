"""The code base's layers, and that imports run one way between them:

    utilities (anil.argtypes, anil.lock: standard library only)
      ← the method (model, sampler, data, algorithm, evaluation, fast, walkthrough,
                    feature_plane, paper.maml / nil / cka / feature_reuse, and the package anil)
      ← data_prep (builds datasets in the method's format)
      ← the run machinery (anil.run: checkpoints, run folders, torchrun, command line, plots)
      ← the programs (train, explain and its explain_maml, paper.compare, paper.analysis)

A module may import from its own layer and the layers before it, never after it, and no chain of
imports leads back to where it started. Imports inside functions count too; the one exception is
``anil.load_run``, which the package exports lazily (``anil/__init__.py``) so that importing
the method loads no run machinery.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["utilities", "method", "data_prep", "run", "programs"]
UTILITIES = {"anil.argtypes", "anil.lock"}
METHOD = {"anil", "anil.model", "anil.sampler", "anil.data", "anil.algorithm", "anil.evaluation",
          "anil.fast", "anil.walkthrough", "anil.paper", "anil.paper.maml", "anil.paper.nil",
          "anil.paper.cka", "anil.paper.feature_reuse", "anil.feature_plane"}
PROGRAMS = {"anil.train", "anil.explain", "anil.explain_maml", "anil.paper.compare",
            "anil.paper.analysis"}
LAZY_EXPORTS = {("anil", "anil.run.checkpoint")}  # anil.load_run


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in UTILITIES:
        return "utilities"
    if module in METHOD:
        return "method"
    if module in PROGRAMS:
        return "programs"
    if module == "data_prep" or module.startswith("data_prep."):
        return "data_prep"
    if module.startswith("anil.run"):
        return "run"
    raise AssertionError(f"{module} is in no layer: add it to tests/method/test_layers.py")


def project_imports(path: Path) -> set[str]:
    """Every anil.* / data_prep.* module that ``path`` imports, at any depth of its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y / from . import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports a submodule when pkg/sub.py exists
            targets = [f"{base}.{a.name}" if module_exists(f"{base}.{a.name}") else base
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in ("anil", "data_prep")}
    return found


def module_exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    files = [*ROOT.glob("anil/**/*.py"), *ROOT.glob("data_prep/**/*.py")]
    return {module_name(f): project_imports(f) for f in files}


def test_every_import_points_to_its_own_layer_or_an_earlier_one():
    wrong = [f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
             for m, targets in graph().items() for t in sorted(targets)
             if (m, t) not in LAZY_EXPORTS and LAYERS.index(layer_of(t)) > LAYERS.index(layer_of(m))]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_chain_of_imports_leads_back_to_its_start():
    edges = {m: {t for t in targets if (m, t) not in LAZY_EXPORTS} for m, targets in graph().items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        if state.get(m) == "open":
            cycle = path[path.index(m):] + [m]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[m] = "open"
        for t in sorted(edges.get(m, ())):
            visit(t, path + [m])
        state[m] = "done"

    for m in sorted(edges):
        visit(m, [])


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    """The layer test would fail on a method module importing the run machinery."""
    monkeypatch.setattr(sys.modules[__name__], "graph",
                        lambda: {"anil.model": {"anil.run.checkpoint"}, "anil.run.checkpoint": set()})
    with pytest.raises(AssertionError, match="anil.model \\(method\\) imports anil.run.checkpoint"):
        test_every_import_points_to_its_own_layer_or_an_earlier_one()


@pytest.mark.parametrize("statement", ["import anil", "import anil.model", "from anil import ConvBody",
                                       "import anil.walkthrough", "import data_prep.glyphs"])
def test_importing_the_method_loads_no_run_machinery(statement):
    code = (f"{statement}\nimport sys\n"
            "print(sorted(m for m in sys.modules if m.startswith(('anil.run', 'anil.train', "
            "'anil.explain', 'anil.paper.compare', 'anil.paper.analysis'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_load_run_is_still_exported():
    import anil
    from anil.run.checkpoint import load_run
    assert anil.load_run is load_run and "load_run" in anil.__all__
