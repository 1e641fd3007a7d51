"""Every measured figure that README.md, docs/*.md or the tutorial notebook quotes comes from a file
that the command which measured it wrote, and agrees with that file at the precision quoted.

How a document ties a figure to its file (an HTML comment, invisible when rendered):

    <!-- figures: docs/results/compare.json over_seeds rows -->
    ... text, tables or a printed transcript quoting figures ...
    <!-- end figures -->

opens a *figures section*; the file names the results file (anil/run/results.py), the optional
words after it restrict the match to those top-level keys of its ``results``. A section ends at
``<!-- end figures -->``, at the next marker, or at the next heading. Inside it, every number
written with a decimal point (``84.5``, ``0.997``, ``11.4×``) must equal, rounded to the decimals
it is written with, some number of the file (header and results), that number × 100 (a
percentage) or × 1000 (milliseconds). ``<!-- figures: benchmarks/RESULTS.md -->`` is the one
kind of section tied to a text file, the raw log of earlier benchmark runs (each part headed by
its device and date): there every such number must appear in that log as written.

Numbers quoted from publications are in ``<!-- quoted: SOURCE -->`` sections, which must name
the source; they are not measured here, so they are not checked against a file. Sample output
that a test regenerates (``<!-- explain-sample``, tests/docs/test_explain.py) is checked there.

Outside every section, a figure-like number (with a decimal point, followed by %, ×, x, ms or s,
or next to ±) is an error: a quoted figure must say where it comes from. The formulas' constants
(1.96, the 97.5% quantile of the standard normal) are not figures. Numbers written without a
decimal point (counts, settings, "about 20%") are not checked.
"""

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                    *(ROOT / "notebooks").glob("*.py")])  # the notebook's cells are written there
MARKER = re.compile(r"<!-- (figures|quoted): *(.*?) *-->|<!-- (end figures|explain-sample)")
HEADING = re.compile(r"^#{1,6} ")
DECIMAL = re.compile(r"(?<![\w.])(\d+)\.(\d+)(?![\w.]|\.\d)")
FIGURE_LIKE = re.compile(r"(?<![\w.:])\d+\.\d+(?![\w.]|\.\d) ?(%|×|x\b|ms\b|s\b)|± ?\d+\.\d+|"
                         r"(?<![\w.])\d+\.\d+ ±")
SCALES = (1, 100, 1000)
# Constants of the formulas, not measurements: 1.96, the 97.5% quantile of the standard normal.
CONSTANTS = {"1.96", "97.5"}


def sections(text: str):
    """(kind, argument, first line number, lines) for every marked section of a document, and
    ('unmarked', '', n, [line]) for every line outside one."""
    kind, argument, start, body, fence = "unmarked", "", 0, [], False
    for n, line in enumerate(text.splitlines(), 1):
        marker = MARKER.search(line)
        fence = fence != line.lstrip().startswith("```")
        ends = marker or (HEADING.match(line) and not fence)
        if ends and kind != "unmarked":
            yield kind, argument, start, body
            kind, argument, body = "unmarked", "", []
        if marker and marker.group(1):
            kind, argument, start, body = marker.group(1), marker.group(2), n, []
        elif marker and marker.group(3) == "explain-sample":
            kind, argument, start, body = "explain-sample", "", n, []
        elif kind == "unmarked":
            yield "unmarked", "", n, [line]
        else:
            body.append(line)
    if kind != "unmarked":
        yield kind, argument, start, body


def numbers(value):
    """Every number in a JSON value (bools excluded)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        yield value


def file_numbers(argument: str):
    """(path, the set of candidate numbers or the log's text) for a figures marker's argument."""
    name, *keys = argument.split()
    path = ROOT / name
    assert path.is_file(), f"the figures marker names {name}, which does not exist"
    if path.suffix != ".json":
        return path, path.read_text()
    record = json.loads(path.read_text())
    assert record.get("format") == "anil-results", f"{name} is not a results file (anil/run/results.py)"
    results = record["results"]
    for key in keys:
        assert key in results, f"{name} has no results key {key!r} (marker: {argument})"
    chosen = [results[k] for k in keys] if keys else [results]
    header = {k: v for k, v in record.items() if k != "results"}
    return path, [*numbers(chosen), *numbers(header), *numbers(results.get("config", {}))]


def matches(written: str, decimals: int, candidates) -> bool:
    quoted = float(written)
    return any(round(value * scale, decimals) == quoted or
               f"{value * scale:.{decimals}f}" == written
               for value in candidates for scale in SCALES)


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check_section(name, argument, start, lines):
    path, candidates = file_numbers(argument)
    wrong = []
    for offset, line in enumerate(lines, 1):
        for m in DECIMAL.finditer(line):
            written = m.group(0)
            if isinstance(candidates, str):
                ok = re.search(rf"(?<![\w.]){re.escape(written)}(?![\d])", candidates) is not None
            else:
                ok = matches(written, len(m.group(2)), candidates)
            if not ok:
                wrong.append(f"{name}:{start + offset}: {written} is not in {shown(path)} "
                             f"({line.strip()[:80]})")
    return wrong


def problems(text: str, name: str) -> list[str]:
    """One line per figure that disagrees with its file or has no source, for a document ``text``."""
    found = []
    for kind, argument, start, lines in sections(text):
        if kind == "figures":
            found += check_section(name, argument, start, lines)
        elif kind == "quoted" and not argument:
            found.append(f"{name}:{start}: a quoted section must name its source")
        elif kind == "unmarked":
            for m in FIGURE_LIKE.finditer(lines[0]):
                if re.search(r"\d+\.\d+", m.group(0)).group(0) in CONSTANTS:
                    continue
                found.append(f"{name}:{start}: the figure {m.group(0)!r} has no source marker "
                             f"({lines[0].strip()[:80]})")
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_figure_agrees_with_the_file_that_measured_it(document):
    found = problems(document.read_text(), shown(document))
    assert not found, "\n".join(found)


# ------------------------------------------------------------------- the checker checks itself


@pytest.fixture
def results_file(tmp_path):
    from anil.run.results import write_results
    return write_results(tmp_path / "r.json", {"rows": {"ANIL": {"accuracy": 0.84467, "ci95": 0.0187}},
                                               "speedup": 11.43, "other": {"x": 0.5}}, "cpu",
                         command="python -m anil.paper.compare")


def test_the_checker_accepts_figures_at_their_quoted_precision(results_file):
    text = (f"<!-- figures: {results_file} rows speedup -->\n"
            "ANIL 84.5 ± 1.9% (84.47 ± 1.87%), 11.4× faster\n<!-- end figures -->\nafter: 20% chance\n")
    assert problems(text, "doc.md") == []


@pytest.mark.parametrize("text,message", [
    ("ANIL 84.6 ± 1.9%", "84.6 is not in"),            # disagrees with the file at one decimal
    ("ANIL 84.47 ± 1.78%", "1.78 is not in"),          # the interval disagrees
    ("x is 0.5", "0.5 is not in"),                     # in the file, but not under the chosen keys
])
def test_the_checker_rejects_a_figure_that_disagrees(results_file, text, message):
    found = problems(f"<!-- figures: {results_file} rows speedup -->\n{text}\n", "doc.md")
    assert len(found) == 1 and message in found[0], found


def test_the_checker_rejects_figures_without_a_source_and_quotes_without_a_name():
    assert "has no source marker" in problems("ANIL reached 84.5% here", "doc.md")[0]
    assert "has no source marker" in problems("## Results\nANIL was 11.4× faster", "doc.md")[0]
    assert "must name its source" in problems("<!-- quoted: -->\n93.7 ± 0.7\n", "doc.md")[0]
    assert problems("<!-- quoted: the paper, Table 2 -->\n93.7 ± 0.7\n", "doc.md") == []
    # a section ends at the next heading: a figure after it needs its own marker
    assert problems("<!-- quoted: the paper -->\n## Ours\n84.5%\n", "doc.md")


def test_the_checker_reads_a_text_log_verbatim(tmp_path):
    log = tmp_path / "log.md"
    log.write_text("ours task float32 CL   173.2ms   0.64x\n")
    assert problems(f"<!-- figures: {log} -->\n173.2 ms, 0.64×\n", "doc.md") == []
    assert "0.65 is not in" in problems(f"<!-- figures: {log} -->\n0.65×\n", "doc.md")[0]
