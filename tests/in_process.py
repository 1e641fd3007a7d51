"""Run train.py's ``main`` inside the test process, where a test can patch what it calls."""

from anil import train


def in_process(argv, capsys):
    """train.main(argv) in this process; returns (exit code, stdout, stderr)."""
    try:
        train.main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
