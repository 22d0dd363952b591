"""Every report file, built in memory: JSON, scikit-learn text, confusion CSV and the page."""

from __future__ import annotations

import json

import numpy as np

from scorer.report.coverage import coverage_csv
from scorer.report.examples import Example
from scorer.report.fields import summary_text
from scorer.report.metrics import classification_report_text, confusion_matrix_csv
from scorer.report.page import render_html


def _json_default(obj):
    """Make numpy scalars/arrays (common in run info) JSON-able; anything else becomes str."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def report_files(
    metrics: dict | None,
    *,
    title: str,
    misclassified: list[Example],
    least_confident: list[Example],
    coverage: dict | None = None,
    extra: dict | None = None,
    fields: dict | None = None,
) -> dict[str, bytes]:
    """Build every report file in memory; the caller writes them (to a folder or to S3).

    Returns
    -------
    files : dict of str -> bytes (UTF-8)
        ``report.json``: ``{"title": title, **metrics, "run": extra or {}}``;
        ``classification_report.txt``: :func:`classification_report_text` (digits=4);
        ``confusion_matrix.csv``: :func:`confusion_matrix_csv`;
        ``report.html``: self-contained page (inline CSS and PNGs, no scripts, no network);
        with ``coverage`` (``{"table": coverage_table(...), "curve": coverage_curve(...)}``)
        also ``coverage.csv``, a table and a plot in the page, and ``"coverage"`` in the JSON.

    With ``fields`` (:func:`scorer.report.fields.field_metrics`), a number-field report:
    ``report.json`` holds ``"mode": "number"`` and the field metrics at the top level (their
    ``"digits"`` are ``metrics``); the text report starts with the field figures; the confusion
    matrix (and the digits' part of the text) are left out when no field had the right length.
    """
    if fields is not None:
        return _field_report_files(fields, title, misclassified, least_confident, coverage,
                                   dict(extra or {}))
    run = dict(extra or {})
    doc = {"title": title, **metrics, **({"coverage": coverage} if coverage else {}),
           "run": run}
    as_json = json.dumps(doc, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    html = render_html(
        metrics,
        title=title,
        misclassified=misclassified,
        least_confident=least_confident,
        coverage=coverage,
        run=run,
    )
    files = {
        "report.json": as_json.encode("utf-8"),
        "classification_report.txt": classification_report_text(metrics).encode("utf-8"),
        "confusion_matrix.csv": confusion_matrix_csv(metrics).encode("utf-8"),
        "report.html": html.encode("utf-8"),
    }
    if coverage:
        files["coverage.csv"] = coverage_csv(coverage["table"]).encode("utf-8")
    return files


def _field_report_files(fields: dict, title: str, misread: list[Example],
                        least_confident: list[Example], coverage: dict | None,
                        run: dict) -> dict[str, bytes]:
    digits = fields["digits"]
    doc = {"title": title, "mode": "number", **fields,
           **({"coverage": coverage} if coverage else {}), "run": run}
    as_json = json.dumps(doc, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    text = summary_text(fields) + (classification_report_text(digits) if digits else "")
    html = render_html(digits, title=title, misclassified=misread,
                       least_confident=least_confident, coverage=coverage, run=run,
                       fields=fields)
    files = {"report.json": as_json.encode("utf-8"),
             "classification_report.txt": text.encode("utf-8"),
             "report.html": html.encode("utf-8")}
    if digits:
        files["confusion_matrix.csv"] = confusion_matrix_csv(digits).encode("utf-8")
    if coverage:
        files["coverage.csv"] = coverage_csv(coverage["table"]).encode("utf-8")
    return files
