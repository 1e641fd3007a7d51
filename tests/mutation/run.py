"""Mutation probe: do the tests notice a wrong line?

    python tests/mutation/run.py                  # every mutant of mutants.py
    python tests/mutation/run.py --only sampler   # names (or files) containing "sampler", or a glob
    python tests/mutation/run.py --list           # the mutants, each checked against the code

The repository is copied once to a scratch folder (the files git tracks or would track; the real
working tree is only read). The named tests are first run there unmutated: they must pass, or no
kill would mean anything. Then, for each mutant: apply its edit to the scratch copy (an original
text that does not occur exactly once is an error, never a kill), run its tests with
``pytest -x``, record the outcome, and restore the file.

Outcomes: KILLED (a test failed), TIMEOUT (the tests ran past the limit; counted as killed and
said separately), SURVIVED (every test passed: nothing states the property the edit breaks),
ERROR (stale edit, or pytest could not run the selection), EQUIVALENT (not run; with
--check-equivalent it is run and reported as an error if a test does fail).

Exit status 0 only when every mutant that is not equivalent was killed and none had an error.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def load_mutants():
    spec = importlib.util.spec_from_file_location("mutants", HERE / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.MUTANTS


def selected(mutants, pattern):
    if pattern is None:
        return list(mutants)
    return [m for m in mutants
            if pattern in m.name or pattern in m.file or fnmatch.fnmatch(m.name, pattern)]


def occurrences(root: Path, m) -> int:
    return (root / m.file).read_text(encoding="utf-8").count(m.original)


# ---------------------------------------------------------------------------- scratch copy


def repository_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (so new tests take part), or, outside
    a git checkout, everything but caches, data and runs."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True).stdout
        return sorted({f for f in out.decode().split("\0") if f and (REPO / f).is_file()})
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "data", "runs", "__pycache__", ".pytest_cache"}
        return sorted(str(p.relative_to(REPO)) for p in REPO.rglob("*")
                      if p.is_file() and not skip & set(p.relative_to(REPO).parts))


def make_scratch() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="anil-mutation-")).resolve()
    if scratch.is_relative_to(REPO) or REPO.is_relative_to(scratch):
        raise SystemExit(f"scratch folder {scratch} overlaps the repository {REPO}")
    for f in repository_files():
        (scratch / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, scratch / f)
    return scratch


def inside(scratch: Path, relative: str) -> Path:
    """The scratch copy of ``relative``; never a path of the real working tree."""
    path = (scratch / relative).resolve()
    if not path.is_relative_to(scratch) or path.is_relative_to(REPO):
        raise SystemExit(f"refusing to touch {path}: not inside the scratch copy {scratch}")
    return path


# ----------------------------------------------------------------------------------- pytest


def pytest_env(scratch: Path) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1",  # no .pyc: a restored file must never meet a mutant's bytecode
               PYTHONPATH=os.pathsep.join([str(scratch), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def run_pytest(scratch: Path, tests: str, timeout: float):
    """(exit code or None on timeout, seconds, output) of ``pytest -x`` on ``tests`` in scratch."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *shlex.split(tests)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=scratch, env=pytest_env(scratch), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, time.perf_counter() - start, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and any subprocess it started, nothing else
        out, _ = proc.communicate()
        return None, time.perf_counter() - start, out


def first_failure(output: str) -> str:
    """The first ``FAILED``/``ERROR`` line of pytest's short summary, shortened."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:150]
    tail = [l for l in output.splitlines() if l.strip()]
    return tail[-1][:150] if tail else ""


def check_imports_come_from(scratch: Path) -> None:
    """The tests in scratch must import scratch's packages, not an installed copy."""
    r = subprocess.run([sys.executable, "-c", "import anil, data_prep; print(anil.__file__); "
                        "print(data_prep.__file__)"], cwd=scratch, env=pytest_env(scratch),
                       capture_output=True, text=True)
    paths = r.stdout.split()
    if r.returncode != 0 or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(scratch) for p in paths):
        raise SystemExit(f"the scratch copy does not import its own packages ({r.stdout}{r.stderr})")


# ------------------------------------------------------------------------------------ main


def fmt_seconds(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:04.1f}s" if s >= 60 else f"{s:.1f}s"


def list_mutants(mutants) -> int:
    stale = 0
    for m in mutants:
        n = occurrences(REPO, m)
        stale += n != 1
        flag = "STALE(x%d)" % n if n != 1 else ("equivalent" if m.equivalent else "")
        print(f"{m.name:<38} {m.file:<24} {flag:<10} {m.description}\n{'':38} tests: {m.tests}"
              + (f"\n{'':38} equivalent: {m.equivalent}" if m.equivalent else ""))
    print(f"{len(mutants)} mutants ({sum(bool(m.equivalent) for m in mutants)} equivalent), {stale} stale")
    return 1 if stale else 0


def measure_baseline(scratch: Path, to_run: list, timeout: float | None) -> dict | None:
    """Seconds each selection of tests takes unmutated; None (after saying why) if one fails."""
    baseline = {}
    for tests in dict.fromkeys(m.tests for m in to_run):
        code, secs, out = run_pytest(scratch, tests, timeout or 1800)
        if code != 0:
            print(f"baseline: `pytest {tests}` does not pass without any mutant (exit {code}):\n"
                  f"{out[-3000:]}", file=sys.stderr)
            return None
        baseline[tests] = secs
        print(f"baseline  {fmt_seconds(secs):>7}  pytest {tests}", flush=True)
    return baseline


def run_mutant(scratch: Path, m, timeout: float) -> tuple[str, float, str]:
    """Apply ``m`` to the scratch copy, run its tests, restore the file: (status, seconds, detail)."""
    path = inside(scratch, m.file)
    text = path.read_text(encoding="utf-8")
    n = text.count(m.original)
    if n != 1:
        return "ERROR", 0.0, f"stale: the original text occurs {n} times in {m.file}"
    path.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
    try:
        code, secs, out = run_pytest(scratch, m.tests, timeout)
    finally:
        path.write_text(text, encoding="utf-8")
    if path.read_text(encoding="utf-8") != text:
        raise SystemExit(f"could not restore {path}")
    if code is None:
        status, detail = "TIMEOUT", f"no result after {fmt_seconds(timeout)}"
    elif code in (1, 2):  # tests failed, or a collection error the mutant caused
        status, detail = "KILLED", first_failure(out)
    elif code == 0:
        status, detail = "SURVIVED", m.description
    else:
        status, detail = "ERROR", f"pytest exit {code}: {first_failure(out)}"
    if m.equivalent and status in ("KILLED", "TIMEOUT"):
        status, detail = "ERROR", f"marked equivalent but killed: {detail}"
    elif m.equivalent and status == "SURVIVED":
        status, detail = "EQUIVALENT", f"ran, its tests pass: {m.equivalent}"
    return status, secs, detail


def report(counts: dict, check_equivalent: bool, total: float, baseline_time: float) -> int:
    """Print the tally and the kill ratio; the exit status: 1 if a mutant survived or erred."""
    killed = counts["KILLED"] + counts["TIMEOUT"]
    judged = killed + counts["SURVIVED"]
    print(f"\nkilled {killed} (of which {counts['TIMEOUT']} by timeout), survived {counts['SURVIVED']}, "
          f"errors {counts['ERROR']}, equivalent {counts['EQUIVALENT']}"
          + ("" if check_equivalent else " (not run)"))
    if judged:
        print(f"kill ratio {killed}/{judged} = {100 * killed / judged:.1f}% of the non-equivalent mutants")
    print(f"total run time {fmt_seconds(total)} (baseline {fmt_seconds(baseline_time)}); "
          f"{sys.executable}")
    return 1 if counts["SURVIVED"] or counts["ERROR"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", metavar="PATTERN", help="mutants whose name or file contains PATTERN "
                        "(or whose name matches it as a glob)")
    parser.add_argument("--list", action="store_true", help="list the mutants and check that each "
                        "original text occurs exactly once; run nothing")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per mutant (default: 10x "
                        "its tests' unmutated time, at least 60)")
    parser.add_argument("--check-equivalent", action="store_true", help="run the equivalent mutants "
                        "too; one that some test kills is reported as an error")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = parser.parse_args(argv)

    mutants = selected(load_mutants(), args.only)
    if not mutants:
        print(f"no mutant matches {args.only!r}", file=sys.stderr)
        return 2
    if args.list:
        return list_mutants(mutants)

    start = time.perf_counter()
    scratch = make_scratch()
    print(f"scratch copy: {scratch}", flush=True)
    try:
        check_imports_come_from(scratch)
        to_run = [m for m in mutants if not m.equivalent or args.check_equivalent]
        baseline = measure_baseline(scratch, to_run, args.timeout)
        if baseline is None:
            return 2
        baseline_time = time.perf_counter() - start
        counts = dict.fromkeys(("KILLED", "TIMEOUT", "SURVIVED", "ERROR", "EQUIVALENT"), 0)
        for m in mutants:
            if m.equivalent and not args.check_equivalent:
                status, secs, detail = "EQUIVALENT", None, m.equivalent
            else:
                timeout = args.timeout or max(60.0, 10 * baseline[m.tests])
                status, secs, detail = run_mutant(scratch, m, timeout)
            counts[status] += 1
            took = "" if secs is None else fmt_seconds(secs)
            print(f"{status:<10} {m.name:<38} {took:>7}  {detail}", flush=True)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return report(counts, args.check_equivalent, time.perf_counter() - start, baseline_time)


if __name__ == "__main__":
    sys.exit(main())
