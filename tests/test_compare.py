"""digits-compare and the comparison it shares with digits-train --base: McNemar's test checked
against hand-computed values, and the command against two real bundles' own CSVs."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest

from scorer.report.comparison import (
    Changed,
    chi_square_p,
    compare,
    exact_binomial_p,
    insert_sections,
    mcnemar,
)

from cli_helpers import assert_usage_error, read_csv, score_cli, write_png_tree
from conftest import ROOT, train_bundle

CLASSES = [str(i) for i in range(10)]


# --- McNemar, by hand ---------------------------------------------------------------------------


def test_exact_mcnemar_matches_the_hand_computed_binomial_tail():
    # b = 1, c = 9: P(X <= 1) for X ~ Bin(10, 1/2) is (1 + 10) / 1024; two-sided doubles it.
    assert exact_binomial_p(1, 9) == 22 / 1024 == 0.021484375
    assert exact_binomial_p(9, 1) == 22 / 1024
    # b = 2, c = 5: (1 + 7 + 21) / 128 * 2 = 58 / 128
    assert exact_binomial_p(2, 5) == pytest.approx(0.453125)
    assert exact_binomial_p(4, 4) == 1.0 and exact_binomial_p(0, 0) == 1.0
    assert exact_binomial_p(0, 6) == 2 / 64


def test_chi_square_mcnemar_matches_the_hand_computed_statistic():
    # b = 10, c = 30: (|10 - 30| - 1)^2 / 40 = 361 / 40 = 9.025; chi-square(1) tail at 9.025,
    # from tables: 0.00266.
    statistic, p = chi_square_p(10, 30)
    assert statistic == 9.025
    assert p == pytest.approx(0.002663, abs=5e-6)
    # at the 5 % critical value 3.841 the tail is 0.05: (|b - c| - 1)^2 / n = 3.841...
    assert chi_square_p(0, 0) == (0.0, 1.0)
    assert math.isclose(math.erfc(math.sqrt(3.841459 / 2)), 0.05, rel_tol=1e-5)


def test_the_test_is_chosen_by_the_number_of_disagreements():
    assert mcnemar(1, 9)["method"] == "exact binomial"
    assert mcnemar(12, 13)["method"].startswith("chi-square")
    assert mcnemar(12, 13, exact=True)["p_value"] == exact_binomial_p(12, 13)
    with pytest.raises(ValueError):
        mcnemar(-1, 2)


def test_compare_counts_fixed_broken_and_per_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    a = np.array([0, 1, 1, 1, 2, 0])  # 4 right
    b = np.array([0, 0, 1, 2, 2, 1])  # 4 right: fixes [1], breaks [3], [5] changes but wrong
    result = compare(y, a, np.full(6, 0.9), b, np.full(6, 0.8), ["0", "1", "2"])
    assert (result["fixed"], result["broken"], result["changed"]) == (1, 1, 3)
    assert result["a"]["per_class"] == {"0": 0.5, "1": 1.0, "2": 0.5}
    assert result["b"]["per_class"] == {"0": 1.0, "1": 0.5, "2": 0.5}
    assert result["difference"] == 0.0 and result["mcnemar"]["p_value"] == 1.0
    json.dumps(result)  # JSON-able as it is

    changed = Changed(k=5)
    for i in range(6):
        changed.add(f"img{i}", int(y[i]), (int(a[i]), 0.9), (int(b[i]), 0.8),
                    np.zeros((28, 28), np.uint8))
    assert [e.source for e in changed.fixed] == ["img1"]
    assert [(e.source, e.prediction) for e in changed.broken] == [("img3", 2)]


def test_sections_go_inside_the_page_before_the_confusion_matrix():
    assert insert_sections("<main><h1>t</h1>\n</main>\n</body>", "<h2>x</h2>") == \
        "<main><h1>t</h1>\n<h2>x</h2>\n</main>\n</body>"
    page = "<main><h2>Run</h2><h2>Confusion matrix</h2></main>"
    assert insert_sections(page, "<h2>x</h2>") == \
        "<main><h2>Run</h2><h2>x</h2>\n<h2>Confusion matrix</h2></main>"


# --- the command --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weak_bundle(tmp_path_factory, mnist):
    """A second, weaker MNIST bundle (same geometry): a challenger that disagrees often."""
    return train_bundle(tmp_path_factory.mktemp("bundles") / "weak", "--dataset", "mnist",
                        "--limit", "2000", "--epochs", "1", "--hidden", "16", "--no-augment",
                        "--field-reader-epochs", "0")


@pytest.fixture(scope="module")
def tree(tmp_path_factory, mnist_test_images):
    x, y = mnist_test_images
    root = tmp_path_factory.mktemp("compare") / "labelled"
    write_png_tree(root, x[:300], y[:300])
    return root


def compare_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scorer.compare_cli", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_digits_compare_agrees_with_each_bundles_own_csv(tmp_path, mnist_bundle, weak_bundle,
                                                         tree):
    done = compare_cli(mnist_bundle, weak_bundle, tree, "--names", "champion,challenger",
                       "--report-dir", tmp_path / "report")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "report" / "comparison.json").read_text())

    # The same figures from two independent digits-score runs
    rows = []
    for bundle in (mnist_bundle, weak_bundle):
        run = score_cli(tree, "--model", bundle, "--out", "-")
        rows.append(read_csv(run.stdout)[1])
    right = [np.array([r["prediction"] == r["label"] for r in side]) for side in rows]
    broken, fixed = int(np.sum(right[0] & ~right[1])), int(np.sum(~right[0] & right[1]))
    assert (result["broken"], result["fixed"]) == (broken, fixed)
    assert result["a"]["correct"] == int(right[0].sum())
    assert result["b"]["correct"] == int(right[1].sum())
    assert result["changed"] == sum(a["prediction"] != b["prediction"]
                                    for a, b in zip(*rows, strict=True))
    assert result["mcnemar"]["p_value"] == pytest.approx(mcnemar(broken, fixed)["p_value"])
    assert result["samples"] == 300
    assert f"McNemar p = {result['mcnemar']['p_value']:.3g}" in done.stdout
    assert "champion" in done.stdout and "challenger" in done.stdout
    html = (tmp_path / "report" / "comparison.html").read_text()
    assert "predictions that changed" in html and "<script" not in html


def test_a_bundle_against_itself_changes_nothing(mnist_bundle, tree):
    done = compare_cli(mnist_bundle, mnist_bundle, tree)
    assert done.returncode == 0, done.stderr
    assert "0 changed: 0 fixed, 0 broken; McNemar p = 1" in done.stdout


def test_usage_errors(tmp_path, mnist_bundle, digits_bundle, tree):
    assert_usage_error(compare_cli(mnist_bundle, digits_bundle, tree), mentions="geometr")
    assert_usage_error(compare_cli(mnist_bundle, tmp_path / "nope", tree), mentions="nope")
    assert_usage_error(compare_cli(mnist_bundle, mnist_bundle, tmp_path / "missing"),
                       mentions="missing")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "x.png").write_bytes((tree / "0").iterdir().__next__().read_bytes())
    assert_usage_error(compare_cli(mnist_bundle, mnist_bundle, unlabelled), mentions="labelled")
    assert_usage_error(compare_cli(mnist_bundle, mnist_bundle, tree, "--names", "same,same"),
                       mentions="--names")
