"""Two models on the same labelled images, side by side: accuracy, per class, accuracy against
coverage, the images whose prediction changed, and McNemar's test on the disagreements.

Pure functions over numpy arrays (no SciPy: the scorer stays light). Shared by `digits-compare`
(any two bundles) and `digits-train --base` (the base bundle against the fine-tuned one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import numpy as np

from scorer.report.coverage import coverage_curve, coverage_table
from scorer.report.examples import Example
from scorer.report.page import _coverage_plot, _grid, _page

#: Below this many disagreements McNemar's p is the exact binomial one; from it on, the
#: chi-square approximation with continuity correction (the usual rule of thumb).
EXACT_BELOW = 25
#: Changed images kept per direction (fixed, broken) for the page: O(k) memory.
MAX_CHANGED_SHOWN = 48


def exact_binomial_p(b: int, c: int) -> float:
    """Two-sided p of b successes in b + c fair coin flips: 2 * P(X <= min(b, c)), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers, one rounding at the division


def chi_square_p(b: int, c: int) -> tuple[float, float]:
    """(statistic, p): (|b - c| - 1)^2 / (b + c) against chi-square with 1 degree of freedom,
    whose survival function is erfc(sqrt(x / 2))."""
    if b + c == 0:
        return 0.0, 1.0
    statistic = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    return statistic, math.erfc(math.sqrt(statistic / 2))


def mcnemar(b: int, c: int, exact: bool | None = None) -> dict:
    """McNemar's test on paired predictions. `b`: images model A got right and B wrong; `c`:
    A wrong and B right (images both got right, or both wrong, say nothing about which is
    better). `exact=None` chooses the exact binomial test below EXACT_BELOW disagreements."""
    if b < 0 or c < 0:
        raise ValueError("counts must be >= 0")
    if exact is None:
        exact = b + c < EXACT_BELOW
    if exact:
        return {"b": b, "c": c, "method": "exact binomial", "statistic": None,
                "p_value": exact_binomial_p(b, c)}
    statistic, p = chi_square_p(b, c)
    return {"b": b, "c": c, "method": "chi-square, continuity corrected",
            "statistic": statistic, "p_value": p}


@dataclass
class Changed:
    """The images whose prediction changed, O(k) memory: the first k that B broke (A right,
    B wrong), with B's wrong reading, and the first k that B fixed, with A's wrong reading."""

    k: int = MAX_CHANGED_SHOWN
    broken: list[Example] = field(default_factory=list)
    fixed: list[Example] = field(default_factory=list)

    def add(self, source: str, label: int, a: tuple[int, float], b: tuple[int, float],
            image: np.ndarray) -> None:
        """One image: its label, each model's (prediction, confidence) and the model input."""
        if a[0] == b[0] or label not in (a[0], b[0]):
            return  # the same reading, or wrong both times
        kept, (wrong, confidence) = (self.broken, b) if a[0] == label else (self.fixed, a)
        if len(kept) < self.k:
            kept.append(Example(source, label, wrong, confidence, np.array(image)))


def compare(y_true, pred_a, conf_a, pred_b, conf_b, labels: list[str]) -> dict:
    """Model A against model B on the same labelled images.

    Parameters
    ----------
    y_true, pred_a, pred_b : array-like of int, shape (n,), class indices
    conf_a, conf_b : array-like of float, shape (n,), each prediction's probability
    labels : class names, in class-index order

    Returns
    -------
    dict (JSON-able): ``samples``; per model (``"a"``, ``"b"``) its ``accuracy``, ``correct``,
    ``per_class`` (recall of each class: the share of its images read right) and ``coverage``
    (the accuracy-against-coverage table, and its ``curve``); ``support`` per class;
    ``changed`` (predictions that differ), ``fixed`` (A wrong, B right), ``broken`` (A right,
    B wrong); ``difference`` (B's accuracy minus A's) and ``mcnemar`` (:func:`mcnemar`).
    """
    y = np.asarray(y_true, np.int64)
    a, b = np.asarray(pred_a, np.int64), np.asarray(pred_b, np.int64)
    right_a, right_b = a == y, b == y
    support = np.bincount(y, minlength=len(labels))
    n = len(y)

    def model(pred: np.ndarray, right: np.ndarray, conf) -> dict:
        per_class = np.bincount(y[right], minlength=len(labels)) / np.maximum(support, 1)
        return {"accuracy": float(right.mean()) if n else 0.0, "correct": int(right.sum()),
                "per_class": {name: float(per_class[i]) for i, name in enumerate(labels)},
                "coverage": coverage_table(y, pred, conf),
                "curve": coverage_curve(y, pred, conf)}

    fixed, broken = int(np.sum(~right_a & right_b)), int(np.sum(right_a & ~right_b))
    result = {"samples": n, "labels": list(labels),
              "support": {name: int(support[i]) for i, name in enumerate(labels)},
              "a": model(a, right_a, conf_a), "b": model(b, right_b, conf_b),
              "changed": int(np.sum(a != b)), "fixed": fixed, "broken": broken,
              "mcnemar": mcnemar(broken, fixed)}
    result["difference"] = result["b"]["accuracy"] - result["a"]["accuracy"]
    return result


def at_threshold(model: dict, threshold: float) -> dict:
    return next(row for row in model["coverage"] if row["threshold"] == threshold)


def summary_line(name: str, result: dict, names: tuple[str, str]) -> str:
    """'user held-out (80): base 92.50 %, new 97.50 % (+5.00 pt); 6 changed: 5 fixed, 1
    broken; McNemar p = 0.219 (exact binomial)'."""
    test = result["mcnemar"]
    return (f"{name} ({result['samples']:,}): {names[0]} {result['a']['accuracy']:.2%}, "
            f"{names[1]} {result['b']['accuracy']:.2%} ({100 * result['difference']:+.2f} pt); "
            f"{result['changed']} changed: {result['fixed']} fixed, {result['broken']} broken; "
            f"McNemar p = {test['p_value']:.3g} ({test['method']})")


def comparison_text(results: dict[str, dict], names: tuple[str, str]) -> str:
    """Every comparison as text for a terminal: a summary line each, then per class and at a
    few confidence thresholds, the two models side by side."""
    lines = []
    for title, result in results.items():
        lines.append(summary_line(title, result, names))
        head = f"  {'class':<8}{'images':>8}{names[0]:>10}{names[1]:>10}"
        lines.append(head)
        for label in result["labels"]:
            lines.append(f"  {label:<8}{result['support'][label]:>8,}"
                         f"{result['a']['per_class'][label]:>10.2%}"
                         f"{result['b']['per_class'][label]:>10.2%}")
        for threshold in (0.5, 0.9):
            cells = []
            for key in ("a", "b"):
                row = at_threshold(result[key], threshold)
                accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
                cells.append(f"{row['coverage']:.1%} accepted, {accuracy} right")
            lines.append(f"  at confidence >= {threshold}: {names[0]} {cells[0]}; "
                         f"{names[1]} {cells[1]}")
    return "\n".join(lines) + "\n"


# ---- HTML ------------------------------------------------------------------------------------


def comparison_sections(results: dict[str, dict], names: tuple[str, str],
                        changed: dict[str, Changed] | None = None, heading: bool = True) -> str:
    """HTML sections (for report.html or a page of their own): per image set, the summary,
    per class, accuracy against coverage for both models, and the changed images."""
    out = [f"<h2>{escape(names[0])} against {escape(names[1])}</h2>"] if heading else []
    for title, result in results.items():
        out.append(f"<h2>{escape(title)}</h2><section>"
                   f"<p>{escape(summary_line(title, result, names))}</p>"
                   f"{_class_table(result, names)}{_coverage_tables(result, names)}</section>")
        if changed and title in changed:
            out.append(_changed_section(title, result, changed[title], names))
    return "\n".join(out)


def _class_table(result: dict, names: tuple[str, str]) -> str:
    rows = "".join(
        f"<tr><td>{escape(label)}</td><td>{result['support'][label]:,}</td>"
        f"<td>{result['a']['per_class'][label]:.2%}</td>"
        f"<td>{result['b']['per_class'][label]:.2%}</td>"
        f"<td>{100 * (result['b']['per_class'][label] - result['a']['per_class'][label]):+.1f}"
        "</td></tr>" for label in result["labels"])
    total = (f'<tr class="avg sep"><td>all</td><td>{result["samples"]:,}</td>'
             f"<td>{result['a']['accuracy']:.2%}</td><td>{result['b']['accuracy']:.2%}</td>"
             f"<td>{100 * result['difference']:+.2f}</td></tr>")
    return ('<table class="metrics"><tr><th>class</th><th>images</th>'
            f"<th>{escape(names[0])}</th><th>{escape(names[1])}</th><th>pt</th></tr>"
            f"{rows}{total}</table>")


def _coverage_tables(result: dict, names: tuple[str, str]) -> str:
    def cell(row: dict) -> str:
        accuracy = "–" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
        return f"<td>{row['coverage']:.1%}</td><td>{accuracy}</td>"

    rows = "".join(
        f"<tr><td>{a['threshold']:.2f}</td>{cell(a)}{cell(b)}</tr>"
        for a, b in zip(result["a"]["coverage"], result["b"]["coverage"], strict=True))
    table = ('<table class="metrics"><tr><th>min confidence</th>'
             f"<th>{escape(names[0])} accepted</th><th>right</th>"
             f"<th>{escape(names[1])} accepted</th><th>right</th></tr>{rows}</table>")
    plots = "".join(f"<div><p class=\"legend\">{escape(name)}</p>{_coverage_plot(curve)}</div>"
                    for name, curve in zip(names, (result["a"]["curve"], result["b"]["curve"]),
                                           strict=True))
    return f'<h3>Accuracy against coverage</h3><div class="cov">{table}{plots}</div>'


def _changed_section(title: str, result: dict, changed: Changed,
                     names: tuple[str, str]) -> str:
    labels = result["labels"]
    parts = [f"<h2>{escape(title)}: predictions that changed <span class=\"muted\">"
             f"({result['changed']:,}: {result['fixed']:,} fixed, {result['broken']:,} broken, "
             "the rest wrong both times)</span></h2><section>"]
    for kind, kept, total, reader in (("broken", changed.broken, result["broken"], names[1]),
                                      ("fixed", changed.fixed, result["fixed"], names[0])):
        parts.append(f"<h3>{kind} by {escape(names[1])} ({len(kept)} of {total:,} shown; "
                     f"captions: {escape(reader)}'s wrong reading)</h3>"
                     f"{_grid(kept, labels, f'None {kind}.')}")
    parts.append("</section>")
    return "".join(parts)


def comparison_page(results: dict[str, dict], names: tuple[str, str],
                    changed: dict[str, Changed] | None = None, run: dict | None = None) -> str:
    """A self-contained page (digits-compare --report-dir): cards, the run, the sections."""
    first = next(iter(results.values()))
    cards = [("labelled images", f"{first['samples']:,}"),
             (names[0], f"{first['a']['accuracy']:.2%}"),
             (names[1], f"{first['b']['accuracy']:.2%}"),
             ("McNemar p", f"{first['mcnemar']['p_value']:.3g}")]
    return _page(f"{names[0]} against {names[1]}", cards, run or {},
                 comparison_sections(results, names, changed, heading=False))


def insert_sections(page_html: str, sections: str,
                    before: str = "<h2>Confusion matrix</h2>") -> str:
    """report.html with `sections` put before its first `before` (the comparison first, where
    the reader looks), or at the end of its main part."""
    at = page_html.find(before)
    if at < 0:
        at = page_html.rindex("</main>")
    return f"{page_html[:at]}{sections}\n{page_html[at:]}"
