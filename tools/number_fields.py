"""Held-out number fields: whole numbers, one per image, scored by the real `digits-score`.

    python tools/number_fields.py --sets .number-fields BUNDLE [BUNDLE ...] [--count 600]

builds the sets (once; seeded and deterministic) and prints, for each bundle and each reported
set, `digits-score --read number`'s fields read exactly, digits right, wrong lengths and speed.

Each field is 2-10 digits on one line, drawn by tests/field_factory.py in one of its styles
(FIELD_STYLES, in equal shares: spaced, touching, pencil, broken fives, boxes, combs, ticks,
digits crossing the cells, underlined, ruled and squared paper, specks, punctuation, rotated,
small, long, light on dark, photos), as PNG or JPEG. Its label is the digits' reading, leading
zeros kept ("00712"); marks the style adds (commas, points, dashes, "$", "€", dust) are not
part of it.

Sets (a folder of image files `<index>-<style>.<png|jpg>` plus `labels.csv`, `source,label`):
- `mnist-fields-dev`: digits from MNIST's test images 0-4999. The ONLY set for tuning the
  reader.
- `mnist-fields`: MNIST's test images 5000-9999, another seed. Reported, never tuned on.
- `uci-fields`: scikit-learn's bundled 8x8 digits (UCI "optdigits", other writers), rendered to
  28x28 light-on-dark images first (upsampled, blurred into round strokes, thresholded, centred
  as MNIST is), another seed. Reported, never tuned on.
The bundles are trained on MNIST's training images only, so no digit here was trained on.

`labels.csv` names each file as digits-score names it when the set's folder is the SOURCE and
is given as it was to --sets; evaluate() writes its own copy, prefixed with the folder exactly as
it passes it on the command line, so a set can be moved.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import center_of_mass, gaussian_filter

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project and its test image factories

from field_factory import FIELD_STYLES, field_digits, render_field  # noqa: E402

SETS = {  # name: (digits, which images, seed)
    "mnist-fields-dev": ("mnist", slice(0, 5000), 4101),
    "mnist-fields": ("mnist", slice(5000, 10000), 4202),
    "uci-fields": ("uci", slice(0, 1797), 4303),
}
DEV = "mnist-fields-dev"
REPORTED = ("mnist-fields", "uci-fields")
LENGTHS = (2, 10)  # digits per field, inclusive
VERSION = "1"  # bump when the rendering changes: sets built before are rebuilt
LABELS = "labels.csv"
DONE = ".complete"  # hidden: digits-score ignores it


def uci_to_mnist(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (28, 28), light ink on dark, from an 8x8 UCI digit (0-255): its ink counts upsampled
    smoothly to 80 px, blurred into round strokes, thresholded with a soft edge (as
    other_hands.render does before redrawing), scaled into MNIST's 20 px box and centred by its
    centre of mass."""
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    scale = 80 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    big = np.asarray(Image.fromarray(crop, "F").resize(size, Image.Resampling.BICUBIC))
    density = gaussian_filter(np.pad(big, 12), 80 / 30)
    density = density / max(float(density.max()), 1e-6)
    level = rng.uniform(0.45, 0.55)
    ink = np.clip((density - level) / 0.12 + 0.5, 0.0, 1.0)  # a firm stroke, antialiased
    rows, cols = np.flatnonzero((ink > 0.02).any(1)), np.flatnonzero((ink > 0.02).any(0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = 20 / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    box = np.asarray(Image.fromarray(ink.astype(np.float32), "F").resize(
        size, Image.Resampling.LANCZOS), np.float32)
    out = np.zeros((28, 28), np.float32)
    cy, cx = center_of_mass(np.clip(box, 0, None))
    y = int(np.clip(round(14 - cy), 0, 28 - box.shape[0]))
    x = int(np.clip(round(14 - cx), 0, 28 - box.shape[1]))
    out[y : y + box.shape[0], x : x + box.shape[1]] = box
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def digit_pool(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The set's digits: uint8 (n, 28, 28) light ink on dark, and their int labels."""
    source, chosen, seed = SETS[name]
    if source == "mnist":
        from trainer.data import load_mnist

        mnist = load_mnist()
        return mnist.x_test[chosen], mnist.y_test[chosen].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    eights = np.round(bunch.images[chosen] * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng([seed, 0])
    return np.stack([uci_to_mnist(d, rng) for d in eights]), bunch.target[chosen].astype(int)


def style_plan(name: str, count: int) -> list[str]:
    """Which style each field gets: every style the same number of times (+-1), shuffled."""
    styles = list(FIELD_STYLES)
    rng = np.random.default_rng([SETS[name][2], 1])
    plan = [styles[i % len(styles)] for i in range(count)]
    rng.shuffle(plan)
    return plan


def render_one(name: str, index: int, style: str, images: np.ndarray,
               labels: np.ndarray) -> tuple[bytes, str]:
    """Field `index` of a set: its encoded image and its label, from its own seed (so the result
    does not depend on which process renders it, or in which order)."""
    rng = np.random.default_rng([SETS[name][2], 2, index])
    n = int(rng.integers(LENGTHS[0], LENGTHS[1] + 1))
    digits, label = field_digits(images, labels, rng, n)
    if style == "broken_five" and "5" not in label:  # the style needs a 5 to break
        fives = np.flatnonzero(labels == 5)
        at = int(rng.integers(n))
        digits[at] = images[fives[int(rng.integers(len(fives)))]]
        label = label[:at] + "5" + label[at + 1 :]
    return render_field(digits, rng, style, labels=label), label


_POOL: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _render_chunk(name: str, jobs: list[tuple[int, str]]) -> list[tuple[bytes, str]]:
    """Render some fields of a set (in this process or a worker, which inherits the digits
    when forked, or loads them once)."""
    if name not in _POOL:
        _POOL[name] = digit_pool(name)
    return [render_one(name, index, style, *_POOL[name]) for index, style in jobs]


def build_set(out: Path, name: str, count: int = 600, workers: int = 1) -> Path:
    """Write one set to out/name/ (<index>-<style>.<png|jpg> and labels.csv) and return the
    folder; skipped when already complete with the same count and rendering version."""
    folder = Path(out) / name
    done = folder / DONE
    stamp = f"{count} fields, version {VERSION}\n"
    if done.exists() and done.read_text() == stamp:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in [done, folder / LABELS, *folder.glob("*-*.png"), *folder.glob("*-*.jpg")]:
        old.unlink(missing_ok=True)
    plan = list(enumerate(style_plan(name, count)))
    if name not in _POOL:
        _POOL[name] = digit_pool(name)
    if workers > 1:
        chunks = [plan[i :: workers * 4] for i in range(workers * 4)]
        with ProcessPoolExecutor(workers) as executor:
            parts = list(executor.map(_render_chunk, [name] * len(chunks), chunks))
        results = {index: part[k] for chunk, part in zip(chunks, parts, strict=True)
                   for k, (index, _) in enumerate(chunk)}
        fields = [results[index] for index, _ in plan]
    else:
        fields = _render_chunk(name, plan)
    rows = []
    for (index, style), (data, label) in zip(plan, fields, strict=True):
        suffix = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        file_name = f"{index:04d}-{style}{suffix}"
        (folder / file_name).write_bytes(data)
        rows.append((os.path.join(str(folder), file_name), label))
    write_labels(folder / LABELS, rows)
    done.write_text(stamp)
    return folder


def write_labels(path: Path, rows: list[tuple[str, str]]) -> None:
    """`source,label`; labels are digit strings, written as text (leading zeros kept)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "label"])
        writer.writerows(rows)


def read_labels(set_dir: str | Path) -> list[tuple[str, str]]:
    """(file name, label) for every field of a set."""
    with (Path(set_dir) / LABELS).open(newline="", encoding="utf-8") as f:
        return [(os.path.basename(row["source"]), row["label"]) for row in csv.DictReader(f)]


def score_command() -> list[str]:
    """This environment's `digits-score` (beside its Python), else `python -m scorer`."""
    script = Path(sys.executable).parent / "digits-score"
    return [str(script)] if script.exists() else [sys.executable, "-m", "scorer"]


def evaluate(bundle_dir: str | Path, set_dir: str | Path, workers: int | None = None) -> dict:
    """Read every field of a set with `digits-score SET --read number` and return the report's
    figures: exact_match, digit_accuracy, wrong_length (fractions), fields_per_second, and the
    field count. Unreadable or blank fields count as wrong (as the report counts them)."""
    source = str(set_dir)
    with tempfile.TemporaryDirectory(prefix="number-fields-") as tmp:
        labels_csv = Path(tmp) / "field-labels.csv"
        fields = read_labels(set_dir)
        write_labels(labels_csv, [(os.path.join(source, name), label) for name, label in fields])
        command = [*score_command(), source, "--read", "number", "--model", str(bundle_dir),
                   "--labels", str(labels_csv), "--report-dir", tmp,
                   "--out", str(Path(tmp) / "predictions.csv")]
        if workers:
            command += ["--workers", str(workers)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode not in (0, 3):  # 3: some fields unreadable, each row says why
            raise RuntimeError(f"digits-score failed ({done.returncode}): {done.stderr[-2000:]}")
        if "matched no input" in done.stderr:  # figures on part of the set would mislead
            raise RuntimeError(f"labels did not match the sources: {done.stderr[-2000:]}")
        report = json.loads((Path(tmp) / "report.json").read_text())
    return {
        "exact_match": report["exact_match"],
        "digit_accuracy": report["digit_accuracy"],
        "wrong_length": report["wrong_length"],
        "fields_per_second": report.get("run", {}).get("images_per_second"),
        "fields": len(fields),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="*", help="model bundle folders (none: only build)")
    parser.add_argument("--sets", default=".number-fields", help="where the sets are built")
    parser.add_argument("--count", type=int, default=600, help="fields per set")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that build the sets, and digits-score's --workers "
                        "(default: all cores to build, digits-score's own default to score)")
    parser.add_argument("--dev", action="store_true",
                        help=f"also score {DEV} (the only set to tune on)")
    args = parser.parse_args(argv)
    names = ([DEV] if args.dev else []) + list(REPORTED)
    build_workers = args.workers or os.cpu_count() or 1
    folders = {name: build_set(Path(args.sets), name, args.count, build_workers)
               for name in names}
    if not args.bundles:
        print("built " + ", ".join(str(folder) for folder in folders.values()))
        return
    width = max(len("bundle"), *(len(b) for b in args.bundles))
    print(f"{'bundle':<{width}}  {'set':<17}{'fields exact':>13}{'digits':>9}"
          f"{'wrong length':>14}{'fields/s':>10}")
    for bundle in args.bundles:
        for name, folder in folders.items():
            got = evaluate(bundle, folder, args.workers)
            rate = got["fields_per_second"]
            print(f"{bundle:<{width}}  {name:<17}{got['exact_match']:>13.2%}"
                  f"{got['digit_accuracy']:>9.2%}{got['wrong_length']:>14.2%}"
                  f"{rate if rate is not None else float('nan'):>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
