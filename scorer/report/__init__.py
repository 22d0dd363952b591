"""Evaluation reports: metrics, scikit-learn-compatible text, CSV, JSON and a static HTML page.

``metrics`` (numbers and text), ``coverage`` (accuracy against coverage by confidence),
``fields`` (number fields: exact matches, digit accuracy), ``examples`` (which images to
show), ``page`` (report.html),
``build`` (every file in memory; the caller writes them to a folder or to S3).
"""

from scorer.report.build import report_files
from scorer.report.coverage import coverage, coverage_curve, coverage_table
from scorer.report.examples import DEFAULT_K, Example, ExampleCollector, choose_examples
from scorer.report.fields import edit_distance, field_metrics
from scorer.report.metrics import (
    classification_report_text,
    compute_metrics,
    confusion_matrix,
    confusion_matrix_csv,
)

__all__ = [
    "DEFAULT_K",
    "Example",
    "ExampleCollector",
    "choose_examples",
    "classification_report_text",
    "compute_metrics",
    "coverage",
    "coverage_curve",
    "coverage_table",
    "edit_distance",
    "field_metrics",
    "confusion_matrix",
    "confusion_matrix_csv",
    "report_files",
]
