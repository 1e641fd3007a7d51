"""anil/run/results.py: the results files that docs/ quotes (the header, the round trip, errors)."""

import json

import pytest

from anil.run.results import ResultsError, command_line, read_results, write_results


def test_a_results_file_records_the_command_versions_date_device_and_figures(tmp_path):
    path = write_results(tmp_path / "sub" / "r.json", {"accuracy": 0.845, "rows": {"ANIL": [1, 2]}},
                         "cpu", command="python -m anil.paper.compare --seeds 3")
    record = read_results(path)
    assert record["format"] == "anil-results" and record["version"] == 1
    assert record["command"] == "python -m anil.paper.compare --seeds 3"
    assert record["device"].startswith("cpu (") and record["date"][:2] == "20"
    assert record["results"] == {"accuracy": 0.845, "rows": {"ANIL": [1, 2]}}
    assert not list((tmp_path / "sub").glob(".r.json.*"))  # no temporary file left behind


def test_an_undefined_figure_is_written_as_null_not_nan(tmp_path):
    path = write_results(tmp_path / "r.json", {"ci95": float("nan")}, "cpu", command="x")
    assert json.loads(path.read_text())["results"]["ci95"] is None


def test_the_command_line_is_the_one_to_type_again(monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # a script, not -m
    assert command_line(["benchmarks/bench.py", "--quick", "a b"]) == "python benchmarks/bench.py --quick 'a b'"
    assert command_line(["/somewhere/train.py", "--threads", "1"]) == "python train.py --threads 1"


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(ResultsError, match="cannot read the results file"):
        read_results(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ResultsError, match="is not a results file of this project"):
        read_results(tmp_path / "other.json")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="choose another --results path"):
        write_results(tmp_path / "file" / "r.json", {}, "cpu", command="x")
