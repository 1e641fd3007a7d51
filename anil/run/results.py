"""Results files: the measured figures that README, docs/ and the notebook quote.

A figure a document quotes must come from a file that the command which measured it wrote, so
that it cannot go stale unnoticed. Each file is one strict-JSON object::

    {"format": "anil-results", "version": 1,
     "command": "python -m anil.paper.compare --results docs/results/compare.json",
     "anil_version": "0.2.0", "date": "2026-12-07T05:20:00+00:00",
     "device": "cpu (x86_64, 2 threads)", "torch": "2.14.1",
     "results": {...}}                      # whatever the command measured, by name

``write_results`` writes it atomically (a temporary file, then a rename), so an interrupted
command leaves the previous file whole. ``read_results`` returns the ``results`` part and checks
the header; tests/docs/test_figures.py compares every quoted figure with these files.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

FORMAT, VERSION = "anil-results", 1


class ResultsError(ValueError):
    """A results file that cannot be written or read; the message names the path."""


def command_line(argv=None) -> str:
    """The command as a user would type it again: ``python -m module args`` or ``python file``."""
    argv = sys.argv if argv is None else argv
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    script = Path(argv[0])  # as typed (benchmarks/bench.py), unless absolute: then its name
    program = f"python -m {spec.name}" if spec is not None and spec.name else (
        "python " + (script.name if script.is_absolute() else str(script)))
    return " ".join([program, *map(shlex.quote, argv[1:])])


def device_description(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.machine()}, {torch.get_num_threads()} threads)"


def write_results(path, results: dict, device, command: str | None = None) -> Path:
    """Write ``results`` with the command line, versions, date and device to ``path``."""
    import torch

    from anil import __version__
    from anil.run.metrics import strict_json

    path = Path(path)
    record = {"format": FORMAT, "version": VERSION, "command": command or command_line(),
              "anil_version": __version__, "torch": torch.__version__.split("+")[0],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device_description(device), "results": strict_json(results)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record, indent=1, allow_nan=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ResultsError(f"cannot write the results file {path}: {e.strerror or e}; choose "
                           f"another --results path") from None
    return path


def read_results(path) -> dict:
    """The whole record of a results file (header and ``results``), checked."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"cannot read the results file {path}: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "results" not in record:
        raise ResultsError(f"{path} is not a results file of this project (no '{FORMAT}' header)")
    return record
