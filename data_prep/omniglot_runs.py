"""The Omniglot authors' 20 one-shot classification runs (``all_runs.zip``, md5 checked, safely
extracted) written to ``<root>/omniglot-runs/run01 .. run20/{training/classNN.png, test/itemNN.png,
class_labels.txt}``: 20 within-alphabet 20-way 1-shot episodes from the evaluation alphabets, read
by ``data_prep.episodes`` and scored by ``evaluate.py RUN --episodes``. The folder appears only
once complete (built under a temporary name).

    python -m data_prep.omniglot --root data --download --runs    # -> data/omniglot-runs
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from anil.data import DatasetError

from . import episodes
from .archives import safe_extract
from .common import PrepError, download
from .omniglot_files import MD5, RUNS_ARCHIVE, RUNS_URL, check_archive, find_archives, how_to_get

RUNS_NAME = "omniglot-runs"
NUM_RUNS = 20
RUNS_MARKER = "runs.json"  # marks <root>/omniglot-runs as written here (so it may be replaced)

def locate_runs(extracted: Path) -> list[Path]:
    """The run folders (``runNN`` holding class_labels.txt) in an extracted all_runs.zip, at its
    top or in one folder below it (the zip's own folder; ``__MACOSX`` and hidden folders ignored)."""
    def runs_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("run")
                      and p.name[3:].isdigit() and (p / episodes.LABELS_FILE).is_file())

    candidates = [extracted] + sorted(p for p in extracted.iterdir() if p.is_dir()
                                      and not p.name.startswith((".", "__MACOSX")))
    found = [runs for runs in map(runs_in, candidates) if runs]
    if len(found) != 1 or len(found[0]) != NUM_RUNS:
        count = sum(len(r) for r in found)
        raise PrepError(f"{RUNS_ARCHIVE} holds {count} run folders (runNN/ with {episodes.LABELS_FILE}) "
                        f"where {NUM_RUNS} were expected; it is not the Omniglot runs file, "
                        f"{how_to_get([RUNS_ARCHIVE])}")
    return found[0]


def prepare_runs(root: Path, source: Path | None = None, fetch: bool = False) -> Path:
    """all_runs.zip -> ``<root>/omniglot-runs/run01..run20``, checked, built under a temporary name."""
    root = Path(root)
    final = root / RUNS_NAME
    if final.exists() and not (final / RUNS_MARKER).is_file():
        raise PrepError(f"{final} exists and was not written by this command (no {RUNS_MARKER}); move it "
                        f"away, or give another --root")
    if fetch:
        archive = download(RUNS_URL, root / "raw" / RUNS_ARCHIVE, MD5[RUNS_ARCHIVE])
    else:
        archive = find_archives(source, root, [RUNS_ARCHIVE]) / RUNS_ARCHIVE
    check_archive(archive, RUNS_ARCHIVE)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{RUNS_NAME}.partial-", dir=root))
    try:
        safe_extract(archive, tmp / "extracted")
        runs = locate_runs(tmp / "extracted")
        for run in runs:  # the pairings and images must all be there
            try:
                episodes.parse_run(run)
            except DatasetError as e:  # names the problem, with a path inside the temporary folder
                raise PrepError(f"{RUNS_ARCHIVE}: {e}; the zip is corrupt, {how_to_get([RUNS_ARCHIVE])}") from None
        stage = tmp / RUNS_NAME
        stage.mkdir()
        for run in runs:
            os.replace(run, stage / run.name)
        (stage / RUNS_MARKER).write_text(json.dumps(
            {"source": str(archive), "md5": MD5[RUNS_ARCHIVE], "runs": [r.name for r in runs],
             "layout": "runNN/{training/classNN.png, test/itemNN.png, class_labels.txt}; read with "
                       "data_prep.episodes"}, indent=1))
        if final.exists():  # replaced only now, when the new one is complete
            os.replace(final, tmp / "old")
        try:
            os.replace(stage, final)
        except BaseException:
            if (tmp / "old").exists() and not final.exists():
                os.replace(tmp / "old", final)  # put the previous runs back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {final}: {len(runs)} runs ({runs[0].name} .. {runs[-1].name})")
    return final
