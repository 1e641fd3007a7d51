"""A JSON file nested thousands deep (crafted or damaged) is a damaged file like any other:
json raises RecursionError for it, which is not a ValueError."""

import json

import numpy as np
import pytest

from anil.data import DatasetError, read_meta, write_prepared
from anil.run.metrics import read_metrics
from tests.in_process import in_process

DEEP = "[" * 100_000 + "]" * 100_000


def prepared(tmp_path):
    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8), np.repeat(np.arange(4), 2),
                  [f"c{i}" for i in range(4)]) for s in ("train", "val", "test")}
    return write_prepared(tmp_path, "toy", splits)


def test_a_deeply_nested_meta_json_is_a_dataset_error(tmp_path, capsys):
    path = prepared(tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta)[:-1] + ', "extra": ' + DEEP + "}")
    with pytest.raises(DatasetError, match=r"meta\.json is corrupt \(nested too deeply"):
        read_meta(path)
    code, _, err = in_process(["--data", path, "--iterations", "1", "--device", "cpu",
                               "--out", tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nested too deeply" in err


def test_a_deeply_nested_metrics_line_is_skipped_as_damaged(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"iteration": 1}\n' + DEEP + '\n{"iteration": 2}\n')
    damaged = []
    assert [r["iteration"] for r in read_metrics(log, damaged)] == [1, 2] and damaged == [2]
