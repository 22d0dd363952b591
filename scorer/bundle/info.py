"""`digits-score --model-info`: what a verified bundle is, where it came from, how it did."""

from __future__ import annotations

import json

from scorer.bundle.loading import Bundle
from scorer.bundle.manifest import FIELD_READER
from scorer.files import sha256_file


def describe(bundle: Bundle) -> str:
    """Lines of `name  value` for people: the files, input, classes, data, headline metrics,
    training settings and, for a fine-tuned bundle, its lineage (base bundle, images, settings,
    the comparison it passed), nested keys joined with dots."""
    m = bundle.manifest
    g = m.geometry
    model = m.files[bundle.model_file]
    lines = [
        ("bundle", f"{bundle.path} (every file matches manifest.json)"),
        ("manifest sha256", sha256_file(bundle.path / "manifest.json")),
        ("created", m.created or "?"),
        ("model", f"{bundle.model_file}, {model.bytes or 0:,} bytes, sha256 {model.sha256}"),
        ("field reader", field_reader(bundle)),
        ("input", f"{g.height}x{g.width} uint8, {g.ink} ink on dark, digit box {g.digit_box} "
                  f"px, centred by {g.centering}"),
        ("classes", " ".join(m.classes)),
        *flatten("dataset", m.dataset),
        *flatten("metrics", m.metrics),
        *flatten("training", m.training),
        *flatten("versions", m.versions),
    ]
    lines += flatten("lineage", m.lineage) if m.lineage else [("lineage", "none: trained from "
                                                               "scratch, not fine-tuned")]
    width = max(len(name) for name, _ in lines)
    return "".join(f"{name:<{width}}  {value}\n" for name, value in lines)


def field_reader(bundle: Bundle) -> str:
    """The field reader's file, size and hash, or why number fields are read by cuts alone."""
    name = bundle.manifest.models.get(FIELD_READER)
    if not name:
        return "none: number fields are read by cutting alone"
    entry = bundle.manifest.files[name]
    return f"{name}, {entry.bytes or 0:,} bytes, sha256 {entry.sha256}"


def flatten(prefix: str, value) -> list[tuple[str, str]]:
    """('lineage.base.path', 'artifacts') pairs; lists and scalars as compact JSON."""
    if isinstance(value, dict) and value:
        return [pair for key, item in value.items() for pair in flatten(f"{prefix}.{key}", item)]
    if isinstance(value, str):
        return [(prefix, value)]
    if isinstance(value, float):
        return [(prefix, f"{value:.6g}")]
    return [(prefix, json.dumps(value, ensure_ascii=False))]
