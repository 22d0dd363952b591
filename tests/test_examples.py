"""examples/: the README's quick start, run as a newcomer runs it, ends with a CSV and a report."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import ROOT, read_csv, score_cli

EXAMPLES = ROOT / "examples"


def test_the_digit_examples_give_a_csv_and_a_report(tmp_path, mnist_bundle):
    out, report = tmp_path / "predictions.csv", tmp_path / "report"
    done = score_cli("examples/digits", "--model", mnist_bundle, "--out", out,
                     "--report-dir", report)
    assert done.returncode == 3, done.stderr  # the broken file, on purpose
    [line] = done.stderr.splitlines()
    assert line.startswith("scored 40, blank 1, failed 1, skipped 0"), line
    rows = {row["source"]: row for row in read_csv(out)[1]}
    assert rows["examples/digits/broken.png"]["status"] == "error"
    assert rows["examples/digits/empty_box.jpg"]["status"] == "blank"
    labelled = [row for row in rows.values() if row["label"]]
    assert len(labelled) == 40 and {row["label"] for row in labelled} == set("0123456789")
    assert sum(row["prediction"] == row["label"] for row in labelled) >= 36
    assert (report / "report.html").stat().st_size > 10_000
    assert json.loads((report / "report.json").read_text())["samples"] == 40


def test_the_number_examples_are_read_against_their_labels(tmp_path, mnist_bundle):
    out = tmp_path / "fields.csv"
    done = score_cli("examples/numbers", "--model", mnist_bundle, "--read", "number",
                     "--labels", "examples/number-labels.csv", "--out", out)
    assert done.returncode == 0, done.stderr
    rows = read_csv(out)[1]
    assert len(rows) == 12 and all(row["label"] for row in rows)
    assert sum(row["prediction"] == row["label"] for row in rows) >= 8


def test_the_examples_stay_small_and_documented():
    files = [path for path in EXAMPLES.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 1_000_000
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in ("empty_box.jpg", "broken.png", "number-labels.csv", "licence"):
        assert name in readme
    assert Path(ROOT / "tools" / "make_examples.py").exists()


def test_the_readme_is_a_short_front_door_whose_links_work():
    """Under 200 lines, its quick start is the command the tests above run, and every
    relative link names a file or folder that exists."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200
    assert "digits-score examples/digits --out predictions.csv --report-dir report" in readme
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) > 10
    for link in links:
        assert link.startswith("http") or (ROOT / link).exists(), link
    for page in ROOT.glob("docs/*.md"):
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / link).exists(), (page.name, link)
