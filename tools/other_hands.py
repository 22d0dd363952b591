"""Held-out "other hands": digit image sets that are not MNIST, scored by the real scorer CLI.

    python tools/other_hands.py --sets .other-hands artifacts-mlp artifacts-cnn

builds the sets (once; seeded and deterministic) and prints each bundle's accuracy on them.

Source. scikit-learn's bundled digits: UCI "optdigits", 1,797 8x8 images (counts 0-16 of ink in
4x4 blocks of 32x32 bitmaps) written on NIST forms by people other than MNIST's writers. Caveat:
these 1,797 are UCI's test part, written by 13 people, and their order is not by writer, so the
dev and reported halves below share writers; only the rendering differs between them.

Sets (PNG/JPEG files in class folders 0-9):
- `uci-writers-dev`: images 0-898 (the first half). The ONLY set used for tuning augmentation and
  recipes (together with MNIST's validation split).
- `uci-writers`: images 899-1796 (the second half), rendered the same way with another seed.
  The reported set: looked at once per final bundle, never tuned on.
- `uci-restyled`: the same second half re-rendered with a harsher mix (thick markers, pencil,
  strong slant, ruled and grey paper, photo lighting) and an independent seed. Not new writers:
  it measures robustness to pens and paper at the extremes. (No handwriting-like font exists on
  this machine - `fc-list` finds only DejaVu - and MNIST's training images are all trained on,
  so neither could give an honest second set.)

Rendering: the 8x8 counts are upsampled smoothly to a 60-120 px ink-density map
(`digit_factory.ink_mask`, then blurred), thresholded, thinned to its centre line
(`digit_factory._skeleton`) and drawn again with a round pen 2.5-4.5 % (thin pen) to 11-17 %
(marker) of the digit's height wide; then slant, ink colour (pen, marker, pencil grey with grain),
paper (white, yellow, grey, ruled) and photo-like lighting, noise and JPEG compression.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, gaussian_filter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from digit_factory import _canvas_for, _encode, _paste, _skeleton, _to_u8, ink_mask  # noqa: E402

N_DIGITS = 1797
DEV = slice(0, 899)
REPORTED = slice(899, N_DIGITS)
SETS = {  # name: (images, seed, style mix)
    "uci-writers-dev": (DEV, 101, "varied"),
    "uci-writers": (REPORTED, 202, "varied"),
    "uci-restyled": (REPORTED, 303, "harsh"),
}
SMOOTHING = 30  # Gaussian sigma = digit height / this
PENS = {  # name: (pen width as a fraction of the digit height, ink grey, pencil grain)
    "thin_pen": ((0.025, 0.045), (10, 60), 0.0),
    "ballpoint": ((0.045, 0.075), (15, 70), 0.0),
    "marker": ((0.11, 0.17), (0, 40), 0.0),
    "pencil": ((0.045, 0.075), (80, 140), 0.35),
}
PAPERS = ("white", "yellow", "grey", "ruled")
MIXES = {  # pens, papers, |slant| range, probability of photo lighting
    "varied": (list(PENS), list(PAPERS), 0.3, 0.3),
    "harsh": (["marker", "pencil", "thin_pen", "marker"], ["grey", "ruled", "yellow"], 0.5, 0.7),
}


def uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """uint8 (1797, 8, 8) light ink on dark (0-16 rescaled to 0-255) and int labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8), bunch.target.astype(int)


def pen_cover(density: np.ndarray, rng: np.random.Generator, pen: str) -> np.ndarray:
    """float32 ink coverage [0, 1]: the digit's centre line (skeleton of the thresholded
    density) drawn again with a round pen of the pen's width; pencil adds grain."""
    (low, high), _, grain = PENS[pen]
    shape = density > rng.uniform(0.4, 0.5)
    width = max(2, round(rng.uniform(low, high) * density.shape[0]))
    line = _skeleton(np.pad(shape, width + 1))
    cover = binary_dilation(line, disk(width | 1)).astype(np.float32)
    cover = gaussian_filter(cover, 0.7)  # antialiased edges
    if grain:
        cover *= 1.0 - grain * rng.random(cover.shape)
    return cover


def disk(size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return yy**2 + xx**2 <= ((size - 1) / 2) ** 2 + 0.5


def slant(cover: np.ndarray, shear: float) -> np.ndarray:
    """Shear horizontally about the middle row (the top moves right for shear > 0), widening
    the canvas to fit."""
    h, w = cover.shape
    extra = int(np.ceil(abs(shear) * h / 2)) + 1
    im = Image.fromarray(_to_u8(cover * 255)).crop((-extra, 0, w + extra, h))
    im = im.transform(im.size, Image.Transform.AFFINE, (1, shear, -shear * h / 2, 0, 1, 0),
                      Image.Resampling.BILINEAR)
    return np.asarray(im, np.float32) / 255.0


def paper(shape: tuple[int, int], rng: np.random.Generator, kind: str) -> np.ndarray:
    """float32 (h, w, 3) paper colour."""
    h, w = shape
    base = {"white": (245, 245, 242), "yellow": (250, 238, 160), "grey": (190, 190, 186),
            "ruled": (246, 246, 240)}[kind]
    rgb = np.ones((h, w, 3), np.float32) * (np.array(base) - rng.uniform(0, 12))
    if kind == "ruled":
        spacing = int(rng.integers(18, 32))
        rows = np.arange(int(rng.integers(0, spacing)), h, spacing)
        rgb[rows] = (195, 205, 235)  # light blue lines, as printed on exercise paper
    return rgb


def render(digit: np.ndarray, rng: np.random.Generator, mix: str) -> bytes:
    """Encoded PNG or JPEG of one 8x8 digit written with a random pen on random paper."""
    pens, papers, max_slant, photo_chance = MIXES[mix]
    pen = pens[int(rng.integers(len(pens)))]
    height = int(rng.integers(60, 121))
    # the 8x8 blocks are ~height/8 px each: blur them into round strokes before thresholding
    density = gaussian_filter(ink_mask(digit, rng, height=height), height / SMOOTHING)
    density = density / max(float(density.max()), 1e-6)
    cover = slant(pen_cover(density, rng, pen), rng.uniform(-max_slant, max_slant))
    canvas = _canvas_for(cover, rng, (1.3, 2.2))
    cover = _paste(canvas, cover, rng)
    ink_grey = rng.uniform(*PENS[pen][1])
    ink = np.array([ink_grey, ink_grey, ink_grey + (rng.uniform(0, 90) if pen != "pencil" else 0)])
    rgb = paper(canvas, rng, papers[int(rng.integers(len(papers)))])
    rgb = rgb * (1 - cover[..., None]) + ink * cover[..., None]
    if rng.random() < photo_chance:  # lit from one side, vignetting, sensor noise
        yy, xx = np.mgrid[0:1 : canvas[0] * 1j, 0:1 : canvas[1] * 1j]
        angle = rng.uniform(0, 2 * np.pi)
        light = 0.8 + 0.3 * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
        rgb = rgb * light[..., None] + rng.normal(0, rng.uniform(3, 8), rgb.shape)
        return _encode(Image.fromarray(_to_u8(rgb)), "JPEG", quality=int(rng.integers(60, 90)))
    return _encode(Image.fromarray(_to_u8(rgb + rng.normal(0, 2, rgb.shape))), "PNG")


def build_set(out: Path, name: str) -> Path:
    """Write one set to out/name/<label>/<index>.<png|jpg> (skipped when already complete)."""
    chosen, seed, mix = SETS[name]
    folder = out / name
    done = folder / ".complete"
    if done.exists():
        return folder
    images, labels = uci_digits()
    rng = np.random.default_rng(seed)
    for index in range(N_DIGITS)[chosen]:
        data = render(images[index], rng, mix)
        suffix = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        target = folder / str(labels[index]) / f"uci{index:04d}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    done.write_text("ok\n")
    return folder


def evaluate(bundle_dir: str | Path, set_dir: str | Path) -> float:
    """Accuracy of a bundle's int8 model on a set, scored by the real `digits-score` CLI (the
    label is the class folder); unreadable or blank images count as wrong."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "predictions.csv"
        done = subprocess.run(
            [sys.executable, "-m", "scorer.cli", "--model", str(bundle_dir), str(set_dir),
             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode not in (0, 3):
            raise RuntimeError(f"digits-score failed: {done.stderr[-2000:]}")
        with out.open(newline="") as f:
            rows = list(csv.DictReader(f))
    correct = sum(row["prediction"] == row["label"] for row in rows)
    return correct / len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", help="model bundle folders")
    parser.add_argument("--sets", default=".other-hands", help="where the sets are built")
    parser.add_argument("--only", default=",".join(SETS),
                        help="comma-separated sets to score (tune on uci-writers-dev only)")
    args = parser.parse_args(argv)
    folders = {name: build_set(Path(args.sets), name) for name in args.only.split(",")}
    width = max(len(b) for b in args.bundles)
    print(f"{'bundle':<{width}}" + "".join(f"{name:>18}" for name in folders))
    for bundle in args.bundles:
        scores = [evaluate(bundle, folder) for folder in folders.values()]
        print(f"{bundle:<{width}}" + "".join(f"{score:>18.2%}" for score in scores))


if __name__ == "__main__":
    main()
