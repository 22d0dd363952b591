"""Evidence for fine-tuning (`make finetune-bench`): a bundle fine-tuned on 400 images of other
writers, measured on images it never saw, with the times.

    python tools/finetune_bench.py --model artifacts [--seeds 42,43,44] [--tune]

The writers are UCI's (scikit-learn's 8x8 digits, rendered as uploads by tools/other_hands.py):
- "your images": 400 images (40 a digit, seeded) of `uci-writers-dev` (UCI images 0-898), put in
  folders 0-9 as a person would sort them, and given to `digits-train --base`;
- `dev-rest`: the other 499 images of that half: the ONLY set the fine-tuning defaults were tuned
  on (with --tune);
- new samples of the same writers: `uci-writers` (UCI images 899-1796, another rendering seed)
  and `uci-restyled` (the same images with harsher pens and paper). Never tuned on;
- other writers: `mnist-uploads`, 1,000 MNIST test digits (writers in neither MNIST's training
  split nor the fine-tuning set) rendered as uploads by tests/digit_factory.py (pens, pencil,
  ruled paper, photos, scans); and MNIST's test set itself (10,000, as 28x28 arrays).
  `mnist-uploads-dev` (1,000 other test digits, another seed) is for tuning (with --tune).
Never mixed into a base bundle's training: they are what a user would fine-tune on.

For each seed: `digits-train --base` (wall time of the whole command: reading, fine-tuning,
conversion, reports), then base and new int8 on every set through the scorer (scorer.compare:
the pixels digits-score sees), printed as a table with the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "tests")]

import other_hands  # noqa: E402

PER_DIGIT = 40  # "400 labelled images": 40 of each digit
UPLOAD_STYLES = ("thin_pen", "pencil_on_yellow", "ballpoint_on_grey", "ruled_paper",
                 "paper_scan", "photo_uneven_light")
MNIST_UPLOADS = 1000


def your_images(sets: Path, seed: int = 7) -> tuple[Path, Path]:
    """(your 400 images, the rest of the dev half) as folders 0-9 (made once)."""
    dev = other_hands.build_set(sets, "uci-writers-dev")
    mine, rest = sets / "finetune-yours", sets / "finetune-dev-rest"
    if (mine / ".complete").exists():
        return mine, rest
    shutil.rmtree(mine, ignore_errors=True)
    shutil.rmtree(rest, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for label in range(10):
        files = sorted((dev / str(label)).iterdir())
        chosen = set(rng.choice(len(files), PER_DIGIT, replace=False).tolist())
        for i, file in enumerate(files):
            target = (mine if i in chosen else rest) / str(label) / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    (mine / ".complete").write_text("ok\n")
    return mine, rest


def mnist_uploads(sets: Path, dev: bool = False) -> Path:
    """1,000 MNIST test digits rendered as uploads, in folders 0-9 (made once); `dev`: 1,000
    others, rendered with another seed, for tuning."""
    from trainer.data import load_mnist

    from digit_factory import STYLES

    folder = sets / ("mnist-uploads-dev" if dev else "mnist-uploads")
    if (folder / ".complete").exists():
        return folder
    mnist = load_mnist()
    order = np.random.default_rng(404).permutation(len(mnist.x_test))
    chosen = order[MNIST_UPLOADS : 2 * MNIST_UPLOADS] if dev else order[:MNIST_UPLOADS]
    rng = np.random.default_rng(405 if dev else 404)
    for k, i in enumerate(chosen):
        data = STYLES[UPLOAD_STYLES[k % len(UPLOAD_STYLES)]](mnist.x_test[i], rng)
        suffix = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        target = folder / str(mnist.y_test[i]) / f"mnist{int(i):05d}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (folder / ".complete").write_text("ok\n")
    return folder


def fine_tune(model: str, yours: Path, out: Path, seed: int, extra: list[str]) -> float:
    """Run the real `digits-train --base`; its wall time in seconds."""
    command = [sys.executable, "-m", "trainer.cli", "--base", model, "--images", str(yours),
               "--out", str(out), "--seed", str(seed), *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"digits-train --base failed ({done.returncode}):\n{done.stdout[-3000:]}"
                 f"\n{done.stderr[-3000:]}")
    return seconds


def accuracies(base: str, new: Path, folder: Path) -> tuple[float, float]:
    """int8 accuracy of base and new on a labelled folder, as digits-score reads it."""
    from scorer.bundle import load_bundle
    from scorer.compare import compare_bundles
    from scorer.sources import SourceStats, iter_inputs

    paired = compare_bundles(iter_inputs([str(folder)], SourceStats()), load_bundle(base),
                             load_bundle(new))
    result = paired.result([str(i) for i in range(10)])
    wrong = paired.blank + paired.failed  # unreadable images count as wrong
    total = result["samples"] + wrong
    return result["a"]["correct"] / total, result["b"]["correct"] / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="artifacts", help="the base bundle")
    parser.add_argument("--sets", default=".other-hands", help="where the sets are built")
    parser.add_argument("--seeds", default="42", help="comma-separated fine-tuning seeds")
    parser.add_argument("--tune", action="store_true",
                        help="also score dev-rest, the set the defaults were tuned on")
    parser.add_argument("--train-args", default="", help="extra digits-train options")
    args = parser.parse_args(argv)
    sets = Path(args.sets)
    yours, rest = your_images(sets)
    folders = {"uci-writers (new samples)": other_hands.build_set(sets, "uci-writers"),
               "uci-restyled (same, harsher)": other_hands.build_set(sets, "uci-restyled"),
               "mnist-uploads (other writers)": mnist_uploads(sets)}
    if args.tune:
        folders = {"dev-rest (tuning)": rest,
                   "mnist-uploads-dev (tuning)": mnist_uploads(sets, dev=True), **folders}
    rows: dict[str, list[tuple[float, float]]] = {}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = Path(tmp) / f"seed{seed}"
            times.append(fine_tune(args.model, yours, out, seed, args.train_args.split()))
            metrics = json.loads((out / "metrics.json").read_text())
            held = metrics["user_holdout"]
            rows.setdefault("your held-out images", []).append(
                (held["base"]["tflite_int8"]["accuracy"], held["new"]["tflite_int8"]["accuracy"]))
            rows.setdefault("MNIST test (other writers)", []).append(
                (metrics["base"]["tflite_int8"]["accuracy"],
                 metrics["models"]["tflite_int8"]["accuracy"]))
            for name, folder in folders.items():
                rows.setdefault(name, []).append(accuracies(args.model, out, folder))
            print(f"seed {seed}: fine-tuned in {times[-1]:.1f} s", file=sys.stderr)
    report(rows, times)


def report(rows: dict[str, list[tuple[float, float]]], times: list[float]) -> None:
    print(f"{'int8 accuracy':<32}{'base':>9}{'new':>9}{'change':>18}")
    for name, pairs in rows.items():
        base, new = (statistics.mean(side) for side in zip(*pairs, strict=True))
        changes = [100 * (b - a) for a, b in pairs]
        spread = f" +- {statistics.stdev(changes):.1f}" if len(changes) > 1 else ""
        print(f"{name:<32}{base:>9.2%}{new:>9.2%}{statistics.mean(changes):>+11.2f} pt{spread}")
    print(f"digits-train --base, whole command (read, fine-tune, convert, reports): "
          f"{statistics.mean(times):.1f} s mean, {max(times):.1f} s at most, over {len(times)} "
          "run(s)")


if __name__ == "__main__":
    main()
