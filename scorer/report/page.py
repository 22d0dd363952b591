"""The self-contained ``report.html`` page of :func:`scorer.report.report_files`.

One static file: inline CSS, images as ``data:`` PNGs, no JavaScript and no network access (a
Content-Security-Policy meta tag forbids both, as a second line of defence behind escaping,
because file names shown in the page are untrusted). Every piece of text goes through
:func:`html.escape`.
"""

from __future__ import annotations

import base64
import io
import json
import math
from html import escape

import numpy as np
from PIL import Image

from scorer.report.examples import Example

#: Thumbnails are scaled by an integer factor to at most this many pixels a side.
THUMB_PX = 64
#: Source names longer than this are shown as "…" + their end (the full name is in a tooltip).
_SRC_CHARS = 28

_CSS = """
:root { color-scheme: light; --ok: 140, 55%; --err: 4, 75%; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1f2328; background: #f6f8fa; margin: 0; padding: 24px; }
main { max-width: 1120px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 16px; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 28px 0 10px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px;
          margin-bottom: 16px; overflow-x: auto; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 16px;
        min-width: 140px; }
.card b { display: block; font-size: 22px; font-variant-numeric: tabular-nums; }
.card span { color: #59636e; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; }
.kv th { text-align: left; color: #59636e; font-weight: 500; }
.kv td { font-family: ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
.metrics td, .metrics th { text-align: right; border-bottom: 1px solid #eaeef2; }
.metrics th:first-child, .metrics td:first-child { text-align: left; }
.metrics tr.avg td { font-weight: 600; }
.metrics tr.sep td { border-top: 2px solid #d0d7de; }
.cm td, .cm th { text-align: center; min-width: 44px; height: 34px; padding: 2px 6px; }
.cm td { border: 1px solid #fff; }
.cm .axis { color: #59636e; font-weight: 600; letter-spacing: .06em; }
.cm .vert { writing-mode: vertical-rl; transform: rotate(180deg); }
.cm .tot { color: #59636e; font-weight: 400; }
.cm .zero { color: #b0b7c0; }
.legend { color: #59636e; font-size: 12px; margin-top: 8px; }
.sw { display: inline-block; width: 12px; height: 12px; vertical-align: -2px; border-radius: 2px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(176px, 1fr)); gap: 10px; }
.grid.fields { grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); }
.grid.fields img { max-width: 100%; height: auto; }
figure { margin: 0; padding: 8px; border: 1px solid #d0d7de; border-radius: 6px;
         text-align: center; background: #fff; }
figure.err { border-color: hsl(var(--err), 60%); background: hsl(var(--err), 97%); }
.thumb { height: 64px; display: flex; align-items: center; justify-content: center; }
/* Natural size (an integer multiple of the input): CSS rescaling would make uneven pixels. */
.thumb img { image-rendering: pixelated; image-rendering: crisp-edges; background: #000; }
figcaption { font-size: 12px; margin-top: 4px; }
.src { display: block; color: #59636e; font: 11px ui-monospace, "DejaVu Sans Mono", monospace;
       white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.muted { color: #59636e; }
.cov { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.cov svg text { font-size: 11px; fill: #59636e; }
.cov .axis { fill: none; stroke: #8c959f; stroke-width: 1; }
.cov .curve { fill: none; stroke: hsl(212, 70%, 45%); stroke-width: 2; }
"""


def field_thumbnail(image: np.ndarray, cuts: tuple) -> np.ndarray:
    """A field's grey thumbnail -> RGB uint8 with a box around each digit read, alternating two
    colours so that neighbouring digits stand apart."""
    rgb = np.repeat(np.asarray(image, np.uint8)[..., None], 3, axis=2)
    h, w = rgb.shape[:2]
    for k, (x0, x1) in enumerate(cuts):
        colour = (255, 170, 0) if k % 2 == 0 else (0, 190, 255)
        x0, x1 = max(0, min(int(x0), w - 1)), max(0, min(int(x1) - 1, w - 1))
        rgb[[0, h - 1], x0 : x1 + 1] = colour
        rgb[:, [x0, x1]] = colour
    return rgb


def thumbnail_data_uri(image: np.ndarray) -> str:
    """PNG ``data:`` URI of an image scaled up (nearest neighbour) to about THUMB_PX pixels.

    Parameters
    ----------
    image : ndarray of shape (h, w) or (h, w, 1)
        uint8 grey levels; other dtypes are clipped to [0, 255] and cast.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)) or 0 in arr.shape:
        raise ValueError(f"expected a 2-D grey or RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    # Integer factor so every source pixel becomes an equal square block (28 -> 56, 8 -> 64);
    # a wide field is scaled by its height.
    scale = max(1, THUMB_PX // max(arr.shape[:2]) if arr.shape[1] <= 2 * arr.shape[0]
                else THUMB_PX // arr.shape[0])
    img = Image.fromarray(np.ascontiguousarray(arr))
    img = img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell_style(value: float, diagonal: bool) -> str:
    """Background shade for a confusion-matrix cell; value is the row-normalized share, 0..1."""
    if value <= 0:
        return ""
    hue = "var(--ok)" if diagonal else "var(--err)"
    # A square root lifts small error rates (1-5 %) into visible tints; lightness 96 % -> 36 %.
    lightness = 96 - 60 * value**0.5
    ink = "#fff" if lightness < 60 else "#1f2328"
    return f' style="background:hsl({hue},{lightness:.0f}%);color:{ink}"'


def _confusion_table(metrics: dict) -> str:
    labels = [escape(x) for x in metrics["labels"]]
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64).reshape(len(labels), len(labels))
    totals = cm.sum(axis=1)
    share = cm / np.maximum(totals, 1)[:, None]
    head = "".join(f"<th>{x}</th>" for x in labels)
    rows = []
    for i, label in enumerate(labels):
        cells = []
        for j, count in enumerate(cm[i]):
            tip = f"true {label}, predicted {labels[j]}: {count} ({share[i, j]:.1%} of row)"
            cls = ' class="zero"' if count == 0 else ""
            style = _cell_style(share[i, j], i == j)
            cells.append(f'<td title="{tip}"{cls}{style}>{count}</td>')
        lead = f'<th class="axis vert" rowspan="{len(labels)}">true</th>' if i == 0 else ""
        rows.append(
            f'<tr>{lead}<th>{label}</th>{"".join(cells)}<td class="tot">{totals[i]}</td></tr>'
        )
    return (
        '<table class="cm">'
        f'<tr><th colspan="2"></th><th class="axis" colspan="{len(labels)}">predicted</th>'
        "<th></th></tr>"
        f'<tr><th colspan="2"></th>{head}<th class="tot">total</th></tr>'
        + "".join(rows)
        + "</table>"
        '<p class="legend">Shade = share of the true class (row). '
        '<span class="sw" style="background:hsl(var(--ok),50%)"></span> correct '
        '<span class="sw" style="background:hsl(var(--err),60%)"></span> errors</p>'
    )


def _metrics_table(metrics: dict) -> str:
    def row(name: str, m: dict, cls: str = "") -> str:
        nums = "".join(f"<td>{m[k]:.4f}</td>" for k in ("precision", "recall", "f1-score"))
        return f"<tr{cls}><td>{escape(name)}</td>{nums}<td>{m['support']}</td></tr>"

    body = [row(label, metrics["classes"][label]) for label in metrics["labels"]]
    body.append(
        f'<tr class="avg sep"><td>accuracy</td><td></td><td></td>'
        f"<td>{metrics['accuracy']:.4f}</td><td>{metrics['samples']}</td></tr>"
    )
    body += [row(avg, metrics[avg], ' class="avg"') for avg in ("macro avg", "weighted avg")]
    return (
        '<table class="metrics"><tr><th>class</th><th>precision</th><th>recall</th>'
        "<th>F1</th><th>support</th></tr>" + "".join(body) + "</table>"
    )


def _coverage_section(coverage: dict | None) -> str:
    """Accuracy against coverage: the table users pick --min-confidence from, and its curve."""
    if not coverage:
        return ""
    rows = "".join(
        f"<tr><td>{r['threshold']:.2f}</td><td>{r['accepted']:,}</td><td>{r['coverage']:.1%}</td>"
        f"<td>{'–' if r['accuracy'] is None else format(r['accuracy'], '.2%')}</td></tr>"
        for r in coverage["table"])
    table = ('<table class="metrics"><tr><th>min confidence</th><th>accepted</th>'
             f"<th>coverage</th><th>accuracy of accepted</th></tr>{rows}</table>")
    return (f"<h2>Accuracy against coverage</h2><section><div class=\"cov\">{table}"
            f"{_coverage_plot(coverage['curve'])}</div><p class=\"legend\">Rows below the "
            "chosen confidence get status=review (digits-score --min-confidence).</p></section>")


def _coverage_plot(curve: list[list[float]], w: int = 320, h: int = 200, pad: int = 36) -> str:
    """Inline SVG (no script): x = coverage 0-100 %, y = accuracy of the accepted, from a
    whole percent below the lowest accuracy on the curve to 100 %, so that a curve from 98.9 %
    to 100 % fills the plot instead of lying flat along its top."""
    if not curve:
        return ""
    low = max(0.0, math.floor(min(acc for _, acc in curve) * 100 - 0.5) / 100)
    span = max(1.0 - low, 1e-9)

    def y(acc: float) -> str:
        return f"{8 + (1.0 - acc) / span * (h - pad - 8):.1f}"

    def xy(cov: float, acc: float) -> str:
        return f"{pad + cov * (w - pad - 8):.1f},{y(acc)}"

    points = " ".join(xy(c, a) for c, a in curve)
    return (f'<svg width="{w}" height="{h}" role="img" aria-label="accuracy against coverage">'
            f'<polyline points="{xy(0, low)} {xy(0, 1)}" class="axis"/>'
            f'<polyline points="{xy(0, low)} {xy(1, low)}" class="axis"/>'
            f'<polyline points="{points}" class="curve"/>'
            f'<text x="{pad - 4}" y="{y(1)}" text-anchor="end" dominant-baseline="middle">'
            '100%</text>'
            f'<text x="{pad - 4}" y="{y(low)}" text-anchor="end" dominant-baseline="middle">'
            f'{low:.0%}</text>'
            f'<text x="{w - 8}" y="{h - pad + 16}" text-anchor="end">coverage 100%</text>'
            f'<text x="{pad}" y="{h - pad + 16}">0%</text>'
            f'<text x="{pad + 4}" y="{h - 6}">accuracy of accepted vs share accepted</text>'
            "</svg>")


def _kv_table(run: dict) -> str:
    def text(v) -> str:
        """A value as a person reads it: a list as its items, no value as "not set"
        (report.json keeps the JSON)."""
        if isinstance(v, np.generic):  # numpy scalars (e.g. a float32 rate) print as numbers
            v = v.item()
        if v is None:
            return "not set"
        if isinstance(v, list | tuple):
            return ", ".join(text(item) for item in v)
        return v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)

    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(text(v))}</td></tr>" for k, v in run.items()
    )
    return f'<table class="kv">{rows}</table>'


def _caption(ex: Example, labels: list[str]) -> str:
    def name(i: int | str) -> str:
        if isinstance(i, str):  # a number field's digit string
            return i or "(no digit)"
        return labels[i] if 0 <= i < len(labels) else str(i)

    guess = f"predicted {name(ex.prediction)}"
    text = guess if ex.label is None else f"true {name(ex.label)} → {guess}"
    return f"{text} ({ex.confidence:.2f})"


def _grid(examples: list[Example], labels: list[str], empty: str) -> str:
    if not examples:
        return f'<p class="muted">{escape(empty)}</p>'
    wide = any(ex.cuts or ex.image.shape[1] > 2 * ex.image.shape[0] for ex in examples)
    figs = []
    for ex in examples:
        src = escape(ex.source, quote=True)
        # Long S3/zip paths differ at the end (the member name), so elide the start, not the end.
        tail = ex.source if len(ex.source) <= _SRC_CHARS else "…" + ex.source[-_SRC_CHARS + 1 :]
        cls = ' class="err"' if ex.is_error else ""
        caption = escape(_caption(ex, labels))
        uri = thumbnail_data_uri(field_thumbnail(ex.image, ex.cuts) if ex.cuts else ex.image)
        figs.append(
            f'<figure{cls}><div class="thumb"><img alt="{caption}" src="{uri}"></div>'
            f'<figcaption>{caption}<span class="src" title="{src}">{escape(tail)}</span>'
            "</figcaption></figure>"
        )
    return f'<div class="grid{" fields" if wide else ""}">{"".join(figs)}</div>'


def render_html(
    metrics: dict | None,
    *,
    title: str,
    misclassified: list[Example],
    least_confident: list[Example],
    run: dict,
    coverage: dict | None = None,
    fields: dict | None = None,
) -> str:
    """The whole page as a str (metrics as returned by :func:`scorer.report.compute_metrics`).
    With ``fields`` (:func:`scorer.report.fields.field_metrics`), a number-field report: its
    cards and per-length table, and ``metrics`` are those of the digits of the fields read with
    the right number of digits (None if there are none)."""
    if fields is not None:
        return _page(title, _field_cards(fields), run, _field_body(fields, metrics, coverage,
                                                                   misclassified,
                                                                   least_confident))
    labels = metrics["labels"]
    n, acc = metrics["samples"], metrics["accuracy"]
    wrong = n - int(np.trace(np.asarray(metrics["confusion_matrix"]).reshape(len(labels), -1)))
    cards = [  # "misclassified", not "errors": status=error in the CSV means unreadable input
        ("labelled images", f"{n:,}"),
        ("accuracy", f"{acc:.2%}"),
        ("macro F1", f"{metrics['macro avg']['f1-score']:.4f}"),
        ("misclassified", f"{wrong:,}"),
    ]
    body = f"""<h2>Confusion matrix</h2>
<section>{_confusion_table(metrics)}</section>
<h2>Per-class metrics</h2>
<section>{_metrics_table(metrics)}</section>
{_coverage_section(coverage)}
<h2>Misclassified <span class="muted">({len(misclassified)} of {wrong:,} shown)</span></h2>
<section>{_grid(misclassified, labels, "No misclassified examples.")}</section>
<h2>Least confident <span class="muted">({len(least_confident)} lowest-confidence
 predictions)</span></h2>
<section>{_grid(least_confident, labels, "No examples.")}</section>"""
    return _page(title, cards, run, body)


def _field_cards(fields: dict) -> list[tuple[str, str]]:
    return [("labelled fields", f"{fields['fields']:,}"),
            ("exact match", f"{fields['exact_match']:.2%}"),
            ("digit accuracy", f"{fields['digit_accuracy']:.2%}"),
            ("wrong length", f"{fields['wrong_length']:.2%}")]


def _field_body(fields: dict, metrics: dict | None, coverage: dict | None,
                misread: list[Example], least_confident: list[Example]) -> str:
    rows = "".join(f"<tr><td>{escape(length)}</td><td>{e['fields']}</td>"
                   f"<td>{e['exact_match']:.2%}</td><td>{e['wrong_length']:.2%}</td></tr>"
                   for length, e in fields["by_length"].items())
    by_length = ('<table class="metrics"><tr><th>digits</th><th>fields</th><th>exact</th>'
                 f"<th>wrong length</th></tr>{rows}</table>")
    digits = "" if metrics is None else f"""<h2>Digits of the fields read with the right
 number of digits</h2>
<section>{_confusion_table(metrics)}{_metrics_table(metrics)}</section>"""
    wrong = fields["fields"] - round(fields["exact_match"] * fields["fields"])
    return f"""<h2>By number of digits</h2>
<section>{by_length}</section>
{digits}
{_coverage_section(coverage)}
<h2>Misread fields <span class="muted">({len(misread)} of {wrong:,} shown; boxes: where the
 reader cut)</span></h2>
<section>{_grid(misread, [], "No misread fields.")}</section>
<h2>Least confident <span class="muted">({len(least_confident)} lowest-confidence
 readings)</span></h2>
<section>{_grid(least_confident, [], "No examples.")}</section>"""


def _page(title: str, cards: list[tuple[str, str]], run: dict, body: str) -> str:
    card_html = "".join(f'<div class="card"><span>{k}</span><b>{v}</b></div>' for k, v in cards)
    run_html = f"<h2>Run</h2><section>{_kv_table(run)}</section>" if run else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{escape(title)}</h1>
<div class="cards">{card_html}</div>
{run_html}
{body}
</main>
</body>
</html>
"""
