"""Plausible bugs, each one exact text edit, and the tests that should notice it.

``python tests/mutation/run.py`` applies each edit to a scratch copy of the repository, runs the
named tests there, and reports whether they failed (the mutant is killed) or passed (it survived:
no test states the property the edit breaks).

One entry per mutant::

    mutant("<module>/<what>", "<file relative to the repository root>",
           "<exact original text: must occur exactly once in the file>",
           "<replacement>",
           "<the bug, one line>",
           "<pytest arguments: files, node ids, -k EXPR>",
           equivalent="<why no result can change>")   # only for an equivalent mutant

A mutant whose original text no longer occurs exactly once is an error, never a kill: edit or
delete it when the code it targets changes. An ``equivalent`` mutant is listed but not run (run.py
--check-equivalent runs it anyway and reports it if some test does fail).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    description: str
    tests: str
    equivalent: str | None = None


MUTANTS: list[Mutant] = []


def mutant(name, file, original, replacement, description, tests, equivalent=None):
    if any(m.name == name for m in MUTANTS):
        raise ValueError(f"two mutants are named {name!r}")
    if original == replacement:
        raise ValueError(f"mutant {name!r} changes nothing")
    MUTANTS.append(Mutant(name, file, original, replacement, description, tests, equivalent))

# The mutants themselves, in three files: the modules around the core (sampler, model, data, the
# paper's MAML/NIL/CKA, data preparation, checkpoints), the core (the algorithm, the fast path,
# evaluation, distributed training) and the run machinery around train.py's loop.
PARTS = ("mutants_modules.py", "mutants_core.py", "mutants_runs.py", "mutants_lake.py",
         "mutants_batch_norm.py")


def _load_parts():
    import importlib.util
    from pathlib import Path
    for part in PARTS:
        path = Path(__file__).with_name(part)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


# Test selections shared by several mutants (the fastest tests that state the property).
SAMPLER = "tests/method/test_sampler.py"
MODEL = "tests/method/test_model.py"
DATA = "tests/method/test_data.py"
NIL = "tests/paper/test_analysis.py -k nil"
CKA = "tests/paper/test_analysis.py -k cka"
MAML = "tests/paper/test_maml.py"
CI95 = "tests/method/test_statistics.py"
GUARDS = "tests/data/test_prep_common.py tests/data/test_archives.py"
CIFAR = "tests/data/test_prep_cifar.py -k 'not train_py'"
OMNIGLOT = "tests/data/test_prep_omniglot.py"
CHECKPOINT = "tests/runs/test_checkpoint.py -k 'not fingerprint'"



# ============================================================================================
# The core modules: the algorithm, the fast path, evaluation, distributed training, the loop.
# ============================================================================================
MATH = "tests/method/test_math.py"
FAST_GRAD = ("tests/method/test_fast.py -k 'reference_meta_gradient or head_loop or batch_norm_statistics "
             "or after_adam or accumulates or float32_precision'")
FAST_EVAL = "tests/method/test_evaluation.py -k 'task_accuracies or accuracies_of or episode'"
DIST_UNIT = ("tests/runs/test_distributed_pieces.py "  # no processes
             "tests/runs/test_distributed.py::test_meta_batch_must_divide_evenly")
DIST = "tests/runs/test_distributed.py -k 'train_like_one or sharded'"  # 2 spawned processes
LOOP = "tests/runs/test_train_loop.py"  # TrainState, RunFolder, end_of_iteration, in milliseconds

_load_parts()
