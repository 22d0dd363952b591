#!/usr/bin/env python3
"""`make bench`: scoring throughput on 30,000 MNIST PNGs, as ratios measured in one run.

The PNGs are MNIST's 10,000 test images, then training images up to --images. Prints images/s for
  - the whole `digits-score` process (all cores; two workers; one worker as on a 1-vCPU Lambda),
  - the per-image loop public Lambda samples use (open, greyscale, resize 28x28, invoke),
    (each of these four the best of --rounds runs, taken in turn),
  - decoding alone in one process (Pillow open + greyscale), and our normalization alone,
  - the wall time of a one-image run (process start to CSV), and the handler's cold start,
and, on photographed/drawn digits made by tests/digit_factory.py, the accuracy of the per-image
loop against ours; with --cnn, the MLP and CNN bundles side by side (MNIST accuracy, size,
training time, images/s, and accuracy on the held-out "other hands" of tools/other_hands.py);
and for `--read number`, fields read exactly, digits right and wrong lengths on the held-out
number fields of tools/number_fields.py, for each bundle (and, for a bundle with a field reader,
for a copy without it: cuts alone), and fields/s for the whole process on 600 fields of about
100 x 600 px (with --workers 1, and by cuts alone, too); and on the photo set of
tools/photo_set.py (phone photos of 2-12 megapixels and A4 page scans, one digit each), images/s
and accuracy for the whole process, --workers 1 and the per-image loop.
Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project and its test image factory

PER_IMAGE_LOOP = r"""
import sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
correct = total = 0
images = [p for p in Path(sys.argv[2]).rglob("*") if p.suffix in (".png", ".jpg")]
for path in sorted(images):
    pixels = np.asarray(Image.open(path).convert("L").resize((28, 28)), dtype=np.uint8)
    interpreter.set_tensor(inp["index"], pixels[None])
    interpreter.invoke()
    correct += int(interpreter.get_tensor(out["index"]).argmax()) == int(path.parent.name)
    total += 1
print(correct / total)
"""


COLD_START = r"""
import time
started = time.perf_counter()
import scorer.handler
scorer.handler.bundle_and_config()
print(time.perf_counter() - started)
"""


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    if (folder / "done").exists():
        return
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / str(label) / f"{i:05d}.png")
    (folder / "done").touch()


# Commands run as an installed copy does: with byte code cached. A shell that sets
# PYTHONDONTWRITEBYTECODE (CI images often do) would make every run compile the scorer's
# modules again, about 50 ms, while the per-image loop's imports come precompiled by pip.
RUN_ENV = {name: value for name, value in os.environ.items()
           if name != "PYTHONDONTWRITEBYTECODE"}


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=RUN_ENV)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 3):
        sys.exit(f"bench: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed, done


def best_of(commands: dict[str, list[str]], rounds: int
            ) -> tuple[dict[str, float], dict[str, subprocess.CompletedProcess]]:
    """The best wall time of each command over `rounds` rounds, run in turn (one of each per
    round), so that a burst of load on a shared machine slows one run, not one configuration.
    Every other round runs them in reverse order, so that no command always runs right after
    the same one (right after the 1-core loop, a 2-core run measured about 2 % slower on
    average here)."""
    best: dict[str, float] = {}
    outputs: dict[str, subprocess.CompletedProcess] = {}
    names = list(commands)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            elapsed, outputs[name] = timed(commands[name])
            best[name] = min(elapsed, best.get(name, elapsed))
    return best, outputs


def csv_accuracy(path: Path) -> float:
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return sum(r["prediction"] == r["label"] for r in rows) / max(len(rows), 1)


def score_command(model: str, source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scorer", str(source), "--model", model, "--out", str(out),
            *extra]


def decode_rate(files: list[Path]) -> float:
    from PIL import Image

    started = time.perf_counter()
    for path in files:
        np.asarray(Image.open(path).convert("L"))
    return len(files) / (time.perf_counter() - started)


def normalize_rate(files: list[Path]) -> float:
    """Normalization as the pipeline runs it: chunks of 64 through normalize_many."""
    from scorer.images import normalize_many

    blobs = [path.read_bytes() for path in files]
    started = time.perf_counter()
    for i in range(0, len(blobs), 64):
        normalize_many(blobs[i : i + 64])
    return len(blobs) / (time.perf_counter() - started)


def styled_accuracy(model: str, images: np.ndarray, labels: np.ndarray, work: Path) -> None:
    """Accuracy of the per-image loop vs digits-score on realistic photographed/drawn digits."""
    from digit_factory import STYLES

    rng = np.random.default_rng(0)
    print(f"\n{'style':<22}{'per-image loop':>16}{'digits-score':>14}")
    for style, make in STYLES.items():
        folder = work / f"style-{style}"
        for label in range(10):
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            data = make(image, rng)
            (folder / str(label) / f"{i:04d}.png").write_bytes(data)  # any format; .png name
        loop = subprocess.run([sys.executable, "-c", PER_IMAGE_LOOP, f"{model}/model.tflite",
                               str(folder)], capture_output=True, text=True, check=True)
        out = work / f"{style}.csv"
        timed(score_command(model, folder, out))
        print(f"{style:<22}{float(loop.stdout):>16.1%}{csv_accuracy(out):>14.1%}")


def compare_models(bundles: dict[str, str], folder: Path, work: Path) -> None:
    """Both architectures side by side; "other hands" are never tuned on (tools/other_hands.py)."""
    import json

    sys.path.insert(0, str(ROOT / "tools"))
    import other_hands

    sets = {name: other_hands.build_set(ROOT / ".other-hands", name)
            for name in ("uci-writers", "uci-restyled")}
    print(f"\n{'model':<6}{'MNIST int8':>11}{'int8 bytes':>12}{'train s':>9}{'images/s':>10}"
          + "".join(f"{name:>14}" for name in sets))
    for name, bundle in bundles.items():
        metrics = json.loads((Path(bundle) / "metrics.json").read_text())
        int8 = metrics["models"]["tflite_int8"]
        elapsed, _ = timed(score_command(bundle, folder, work / f"{name}.csv"))
        rate = sum(1 for _ in folder.rglob("*.png")) / elapsed
        others = [other_hands.evaluate(bundle, path) for path in sets.values()]
        print(f"{name:<6}{int8['accuracy']:>11.2%}{int8['bytes']:>12,}{metrics['seconds']:>9.0f}"
              f"{rate:>10,.0f}" + "".join(f"{acc:>14.2%}" for acc in others))


def number_fields(bundles: dict[str, str], work: Path, rounds: int) -> None:
    """`--read number` on the held-out field sets (never tuned on), and its speed."""
    sys.path.insert(0, str(ROOT / "tools"))
    import number_fields as fields

    from scorer.bundle import load_bundle

    sets = {name: fields.build_set(ROOT / ".number-fields", name)
            for name in fields.REPORTED}
    print(f"\n--read number{'':<16}" + "".join(f"{name:>34}" for name in sets))
    print(f"{'model':<29}" + f"{'exact':>12}{'digits':>10}{'wrong len':>12}" * len(sets))
    readers = {}
    for name, bundle in bundles.items():
        readers[name] = bundle
        if load_bundle(bundle).field_reader_bytes() is not None:  # what the field reader adds
            readers[f"{name}, cuts alone"] = cuts_alone(bundle, work / f"cuts-{name}")
    for name, bundle in readers.items():
        results = [fields.evaluate(bundle, path) for path in sets.values()]
        print(f"{name:<29}" + "".join(f"{r['exact_match']:>12.2%}{r['digit_accuracy']:>10.2%}"
                                      f"{r['wrong_length']:>12.2%}" for r in results))
    folder = speed_fields(ROOT / ".bench" / "fields-100x600")
    bundle = next(iter(bundles.values()))
    commands = {
        "whole": score_command(bundle, folder, work / "fields.csv", "--read", "number"),
        "single": score_command(bundle, folder, work / "fields1.csv", "--read", "number",
                                "--workers", "1"),
        "cuts": score_command(readers.get(f"{next(iter(bundles))}, cuts alone", bundle),
                              folder, work / "fields-cuts.csv", "--read", "number"),
    }
    best, _ = best_of(commands, rounds)
    count = sum(1 for _ in folder.glob("*.png"))
    print(f"fields/s, {count} fields of 7 digits, about 100 x 600 px (PNG), best of {rounds}: "
          f"whole process {count / best['whole']:,.0f}, --workers 1 {count / best['single']:,.0f} "
          f"({best['single'] / best['whole']:.2f}x); whole process by cuts alone "
          f"{count / best['cuts']:,.0f} ({best['whole'] / best['cuts']:.2f}x the time)")


def cuts_alone(bundle: str, out: Path) -> str:
    """A copy of the bundle without its field reader: number fields read by cutting alone."""
    from dataclasses import replace

    from scorer.bundle import load_bundle, write_bundle
    from scorer.bundle.manifest import FIELD_READER

    loaded = load_bundle(bundle)
    name = loaded.manifest.models[FIELD_READER]
    files = {file: (Path(bundle) / file).read_bytes() for file in loaded.manifest.files
             if file != name and (Path(bundle) / file).is_file()}
    models = {key: file for key, file in loaded.manifest.models.items() if key != FIELD_READER}
    write_bundle(out, files, replace(loaded.manifest, models=models))
    return str(out)


def photo_speed(model: str, count: int, work: Path, rounds: int) -> None:
    """What users upload: phone photos and page scans (tools/photo_set.py, made once), scored
    by the whole process, by one process, and by the per-image loop."""
    sys.path.insert(0, str(ROOT / "tools"))
    import photo_set

    from scorer.workers import default_workers

    folder = photo_set.build_set(ROOT / ".bench" / f"photos-{count}", count)
    commands = {
        "whole": score_command(model, folder, work / "photos.csv"),
        "single": score_command(model, folder, work / "photos1.csv", "--workers", "1"),
        "loop": [sys.executable, "-c", PER_IMAGE_LOOP, f"{model}/model.tflite", str(folder)],
    }
    best, outputs = best_of(commands, rounds)
    megabytes = sum(path.stat().st_size for path in folder.rglob("*.*")) / 2**20
    print(f"\n{count} photos and scans ({megabytes:.0f} MB; tools/photo_set.py), best of "
          f"{rounds}:")
    rows = [
        (f"digits-score, whole process ({default_workers()} workers)", best["whole"],
         csv_accuracy(work / "photos.csv")),
        ("digits-score --workers 1", best["single"], csv_accuracy(work / "photos1.csv")),
        ("per-image loop, whole process", best["loop"], float(outputs["loop"].stdout)),
    ]
    print(f"{'':<40}{'images/s':>10}{'vs loop':>9}{'accuracy':>10}")
    for name, seconds, accuracy in rows:
        print(f"{name:<40}{count / seconds:>10,.1f}{best['loop'] / seconds:>8.2f}x"
              f"{accuracy:>10.1%}")
    same = (work / "photos.csv").read_bytes() == (work / "photos1.csv").read_bytes()
    print(f"whole process vs --workers 1: {best['single'] / best['whole']:.2f}x; "
          f"CSVs {'byte-identical' if same else 'DIFFERENT'}")


def speed_fields(folder: Path, count: int = 600) -> Path:
    """Fields to time (made once): 7 MNIST test digits 60 px high, about 100 x 600 px, in
    turn spaced, in a comb, in boxes and underlined."""
    if folder.is_dir() and sum(1 for _ in folder.glob("*.png")) == count:
        return folder
    from trainer.data import load_mnist

    from field_factory import field_digits, render_field

    mnist = load_mnist()
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        digits, _ = field_digits(mnist.x_test, mnist.y_test, rng, 7)
        style = ("spaced", "comb", "boxes", "underline")[i % 4]
        data = render_field(digits, rng, style, height=60, fmt="PNG")
        (folder / f"{i:04d}.png").write_bytes(data)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="artifacts", help="model bundle folder")
    parser.add_argument("--images", type=int, default=30000,
                        help="MNIST images to use (the test set first, then training images)")
    parser.add_argument("--styled", type=int, default=500, help="images per realistic style")
    parser.add_argument("--cnn", default=None, help="a CNN bundle to compare with --model")
    parser.add_argument("--no-fields", action="store_true",
                        help="skip the number fields (--read number)")
    parser.add_argument("--photos", type=int, default=200,
                        help="phone photos and page scans to time (0 skips them)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="runs of each throughput command, in turn; the best counts")
    args = parser.parse_args()

    from trainer.data import load_mnist

    mnist = load_mnist()
    x = np.concatenate([mnist.x_test, mnist.x_train])[: args.images]
    y = np.concatenate([mnist.y_test, mnist.y_train])[: args.images]
    folder = ROOT / ".bench" / f"mnist-png-{len(x)}"
    write_pngs(folder, x, y)
    files = sorted(folder.rglob("*.png"))
    print(f"{len(files)} MNIST PNGs, {os.cpu_count()} cores, model {args.model}, "
          f"{time.strftime('%Y-%m-%d')}\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        commands = {
            "whole": score_command(args.model, folder, work / "all.csv"),
            "two": score_command(args.model, folder, work / "two.csv", "--workers", "2"),
            "single": score_command(args.model, folder, work / "one.csv", "--workers", "1"),
            "loop": [sys.executable, "-c", PER_IMAGE_LOOP, f"{args.model}/model.tflite",
                     str(folder)],
        }
        best, outputs = best_of(commands, args.rounds)
        whole, two, single, loop = (best[name] for name in ("whole", "two", "single", "loop"))
        accuracy = csv_accuracy(work / "all.csv")
        loop_accuracy = float(outputs["loop"].stdout)
        one_image = min(timed(score_command(args.model, files[0], work / "one.csv"))[0]
                        for _ in range(5))
        decode, normalize = decode_rate(files), normalize_rate(files)
        cold = subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, text=True,
                              check=True, env={**RUN_ENV, "MODEL_DIR": args.model})

        rows = [
            ("digits-score, whole process", len(files) / whole, accuracy),
            ("digits-score --workers 2", len(files) / two, None),
            ("digits-score --workers 1", len(files) / single, None),
            ("per-image loop, whole process", len(files) / loop, loop_accuracy),
            ("decode only, one process", decode, None),
            ("normalize only, one process", normalize, None),
        ]
        print(f"{'':<34}{'images/s':>10}{'vs loop':>9}{'accuracy':>10}")
        for name, rate, acc in rows:
            print(f"{name:<34}{rate:>10,.0f}{rate / (len(files) / loop):>8.2f}x"
                  f"{'' if acc is None else f'{acc:.2%}':>10}")
        print(f"\ntwo workers vs one worker: {single / two:.2f}x; whole process vs per-image "
              f"loop: {loop / whole:.2f}x (best of {args.rounds} interleaved runs each)")
        print(f"one-image run, process start to CSV: {one_image:.2f} s (best of 5)")
        # Start-up is one process's work whatever the workers: two of them can at most halve
        # the rest of a --workers 1 run.
        print(f"most two workers can be vs one with that start-up: "
              f"{single / (one_image + (single - one_image) / 2):.2f}x")
        print(f"Lambda handler cold start (import + model load): {float(cold.stdout):.2f} s")
        if args.cnn:
            compare_models({"MLP": args.model, "CNN": args.cnn}, folder, work)
        if args.styled:
            styled_accuracy(args.model, mnist.x_test[-args.styled:], mnist.y_test[-args.styled:],
                            work)
        if args.photos:
            photo_speed(args.model, args.photos, work, min(args.rounds, 3))
        if not args.no_fields:
            bundles = {"MLP": args.model, **({"CNN": args.cnn} if args.cnn else {})}
            number_fields(bundles, work, min(args.rounds, 3))


if __name__ == "__main__":
    main()
