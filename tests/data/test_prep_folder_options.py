"""data_prep.folder's option values: each bad one is an argparse error that says what is wrong."""

import pytest

from data_prep import folder


@pytest.mark.parametrize("args, message", [
    (["--split", "0.5,0.5"], "has 2 values"),
    (["--split", "0.7,0.2,0.2"], "sums to 1.1"),
    (["--split", "a,b,c"], "is not three numbers"),
    (["--split", "0.5,0,0.5"], "train and val must lie strictly between 0 and 1"),
    (["--split", "nan,0.5,0.5"], "train and val must lie strictly between 0 and 1"),
    (["--size", "0"], "must be from 1 to 2048"),
    (["--size", "99999"], "must be from 1 to 2048"),
    (["--size", "2.5"], "whole number of pixels"),
    (["--min-images", "1"], "must be 2 or more"),
])
def test_bad_option_values_are_argparse_errors(tmp_path, capsys, args, message):
    argv = ["--source", str(tmp_path), "--out", str(tmp_path / "o"), "--size", "8"] + args
    with pytest.raises(SystemExit) as e:
        folder.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and ": error: argument --" in err[-1] and message in err[-1]
