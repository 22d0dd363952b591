"""The `digits-score` CLI end to end: real PNG files, real bundles, real subprocesses."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import scorer

from cli_helpers import ROOT, accuracy, assert_usage_error, read_csv, score_cli, write_png_tree
from digit_factory import mnist_png

HEAVY_MODULES = ("tensorflow", "keras", "sklearn", "scipy", "matplotlib")
BASE = ["source", "prediction", "confidence", "status", "error"]
PROBS = [f"p{d}" for d in range(10)]


# --- helpers (those other test modules use too are in cli_helpers) ------------------------------


def measured_run(args, stdout_path: Path, stderr_path: Path, timeout: float = 600):
    """Run the CLI and return (exit code, peak RSS of any one process in MB, peak of the summed
    RSS of the CLI and its workers in MB).

    The single-process peak is exact: a wrapper reports RUSAGE_CHILDREN for its own children
    (this pytest process's counter would include the TensorFlow training run of the fixtures).
    The tree sum is sampled every 50 ms with psutil (it counts pages shared by fork twice, so it
    overstates)."""
    psutil = pytest.importorskip("psutil")
    rss_file = stdout_path.with_suffix(".maxrss")
    wrapper = ("import resource, subprocess, sys\n"
               "code = subprocess.call(sys.argv[2:])\n"
               "with open(sys.argv[1], 'w') as f:\n"
               "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
               "sys.exit(code)\n")
    command = [sys.executable, "-c", wrapper, str(rss_file),
               sys.executable, "-m", "scorer", *map(str, args)]
    tree_peak = 0
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err)
        wrapper_process = psutil.Process(process.pid)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            assert time.monotonic() < deadline, "the CLI did not finish in time"
            total = 0
            with contextlib.suppress(psutil.Error):  # processes come and go while we look
                for p in wrapper_process.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
            tree_peak = max(tree_peak, total)
            time.sleep(0.05)
    single_peak_kb = int(rss_file.read_text())  # Linux reports kilobytes
    return process.returncode, single_peak_kb / 1024, tree_peak / 2**20


def crafted_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid 1-bit greyscale PNG of any declared size, built row by row (never in memory):
    all-black pixels compress ~1000:1, so 40000 x 40000 is ~200 kB on disk. `rows` writes fewer
    rows than declared (a truncated stream)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    body += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_run(labelled_tree, mnist_bundle, tmp_path_factory):
    """One scoring run of the labelled tree with a report; (process, csv path, report folder)."""
    out = tmp_path_factory.mktemp("run") / "predictions.csv"
    report = out.parent / "report"
    done = score_cli(labelled_tree, "--model", mnist_bundle, "--out", out, "--report-dir", report,
                     "--workers", 2, "--batch-size", 64)
    return done, out, report


# --- happy paths -----------------------------------------------------------------------------


def test_labelled_folders_give_a_label_column_and_high_accuracy(labelled_run, labelled_tree):
    done, out, _ = labelled_run
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    header, rows = read_csv(out)
    assert header == [*BASE, "label"]
    expected = sorted(str(p) for p in labelled_tree.rglob("*.png"))
    assert sorted(r["source"] for r in rows) == expected
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows)
    assert all(r["label"] == Path(r["source"]).parent.name for r in rows)
    assert all(r["prediction"] in list("0123456789") for r in rows)
    assert all(0.0 < float(r["confidence"]) <= 1.0 for r in rows)
    assert accuracy(rows) >= 0.90
    assert "accuracy" in done.stderr  # the summary line


def test_report_dir_matches_the_csv(labelled_run, labelled_tree):
    done, out, report = labelled_run
    _, rows = read_csv(out)
    assert sorted(p.name for p in report.iterdir()) == [
        "classification_report.txt", "confusion_matrix.csv", "coverage.csv", "report.html",
        "report.json"]
    doc = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert doc["accuracy"] == pytest.approx(accuracy(rows), abs=1e-9)
    assert doc["samples"] == len(rows)
    assert doc["run"]["images_scored"] == len(rows) and doc["run"]["images_failed"] == 0
    assert doc["run"]["sources"] == [str(labelled_tree)]  # the Run card says what was scored
    matrix = list(csv.reader(io.StringIO((report / "confusion_matrix.csv").read_text())))
    counts = np.array([[int(v) for v in line[1:]] for line in matrix[1:]])
    assert counts.shape == (10, 10) and counts.sum() == len(rows)
    assert np.trace(counts) == sum(r["prediction"] == r["label"] for r in rows)
    text = (report / "classification_report.txt").read_text()
    assert "precision" in text and "accuracy" in text and "weighted avg" in text
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "</html>" in html.lower()
    # the card counts wrong predictions; "error" is the CSV's status for unreadable inputs
    wrong = len(rows) - np.trace(counts)
    assert f"<span>misclassified</span><b>{wrong:,}</b>" in html
    assert "<span>errors</span>" not in html


def test_report_and_summary_quote_the_same_speed(labelled_run):
    done, _, report = labelled_run
    summary = re.search(r"([\d,]+) images/s", done.stderr)
    assert summary, done.stderr
    doc = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert f"{doc['run']['images_per_second']:,.0f}" == summary.group(1)


def test_stdout_and_probabilities(labelled_tree, mnist_bundle):
    images = sorted(labelled_tree.rglob("*.png"))[:25]
    done = score_cli(*images, "--model", mnist_bundle, "--out", "-", "--probabilities")
    assert done.returncode == 0, done.stderr
    header, rows = read_csv(done.stdout)
    assert header == [*BASE, "label", *PROBS]
    assert [r["source"] for r in rows] == [str(p) for p in images]  # order of the arguments
    for row in rows:
        probs = np.array([float(row[p]) for p in PROBS])
        assert probs.sum() == pytest.approx(1.0, abs=0.03)
        assert row["prediction"] == str(int(probs.argmax()))
        assert float(row["confidence"]) == pytest.approx(probs.max(), abs=1e-6)
    assert "scored 25" in done.stderr  # the summary goes to stderr, never into the CSV


def test_no_label_column_without_labels(tmp_path, mnist_bundle, mnist_test_images):
    x, _ = mnist_test_images
    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(mnist_png(x[i]))
    done = score_cli(tmp_path, "--model", mnist_bundle, "--variant", "float32")
    assert done.returncode == 0, done.stderr
    header, rows = read_csv(done.stdout)
    assert header == BASE and len(rows) == 3


def test_labels_csv_overrides_folder_names(tmp_path, mnist_bundle, mnist_test_images):
    x, y = mnist_test_images
    flat = tmp_path / "flat"
    flat.mkdir()
    sources = []
    for i in range(30):
        path = flat / f"img{i}.png"
        path.write_bytes(mnist_png(x[i]))
        sources.append(str(path))
    wrong = tmp_path / str((y[30] + 1) % 10) / "misfiled.png"  # the folder name is wrong
    wrong.parent.mkdir()
    wrong.write_bytes(mnist_png(x[30]))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "label"])
        writer.writerows([(s, str(y[i])) for i, s in enumerate(sources) if i % 3])
        writer.writerow([str(wrong), str(y[30])])
    done = score_cli(flat, wrong, "--model", mnist_bundle, "--labels", labels)
    assert done.returncode == 0, done.stderr
    header, rows = read_csv(done.stdout)
    assert header == [*BASE, "label"]
    by_source = {r["source"]: r["label"] for r in rows}
    for i, source in enumerate(sources):
        assert by_source[source] == (str(y[i]) if i % 3 else "")  # unlisted: no label
    assert by_source[str(wrong)] == str(y[30])


@pytest.mark.parametrize(
    "content",
    ["file,digit\na.png,3\n", "source,label\na.png,12\n", "source,label\na.png,\n",
     "", "\xff\xfe garbage"],
    ids=["wrong-header", "label-12", "empty-label", "empty-file", "not-utf8"],
)
def test_bad_labels_csv_is_a_usage_error(tmp_path, labelled_tree, mnist_bundle, content):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(content.encode("latin-1"))
    out = tmp_path / "out.csv"
    done = score_cli(labelled_tree / "3", "--model", mnist_bundle, "--labels", labels,
                     "--out", out)
    assert_usage_error(done, mentions="--labels")
    assert not out.exists()


def test_labels_csv_that_does_not_exist(tmp_path, labelled_tree, mnist_bundle):
    done = score_cli(labelled_tree / "3", "--model", mnist_bundle, "--labels",
                     tmp_path / "nope.csv")
    assert_usage_error(done, mentions="--labels")


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_labels_that_are_not_a_regular_file_are_refused_at_once(tmp_path, labelled_tree,
                                                                  mnist_bundle, kind):
    """/dev/zero was read until memory ran out; a FIFO blocked before scoring started."""
    labels = Path("/dev/zero")
    if kind == "fifo":
        labels = tmp_path / "labels.fifo"
        os.mkfifo(labels)
    done = score_cli(labelled_tree / "3", "--model", mnist_bundle, "--labels", labels,
                     "--out", tmp_path / "out.csv", timeout=60)
    assert_usage_error(done, mentions="not a regular file")


def test_labels_csv_larger_than_the_limit_is_refused(tmp_path, monkeypatch):
    from scorer.sources import LabelsError, labels

    path = tmp_path / "labels.csv"
    path.write_text("source,label\n" + "a.png,3\n" * 200, encoding="utf-8")
    monkeypatch.setattr(labels, "MAX_LABELS_BYTES", 1000)
    with pytest.raises(LabelsError, match="larger than"):
        labels.read_labels_csv(str(path), [str(d) for d in range(10)])
    monkeypatch.setattr(labels, "MAX_LABELS_BYTES", 10_000)
    assert len(labels.read_labels_csv(str(path), [str(d) for d in range(10)])) == 1


def test_awkward_file_names_survive_a_csv_round_trip(tmp_path, mnist_bundle, mnist_test_images):
    x, _ = mnist_test_images
    names = ["a,b.png", 'say "seven".png', "  spaced out .png", "ünïcödé 数字 ✓.png",
             "semi;colon's.png", "tab\there.png", "=SUM(A1).png", "back\\slash.png"]
    folder = tmp_path / "names"
    folder.mkdir()
    try:
        (folder / "new\nline.png").write_bytes(mnist_png(x[0]))
        names.append("new\nline.png")
    except OSError:
        pass  # not on this filesystem
    for i, name in enumerate(names):
        (folder / name).write_bytes(mnist_png(x[i]))
    out = tmp_path / "out.csv"
    done = score_cli(folder, "--model", mnist_bundle, "--out", out)
    assert done.returncode == 0, done.stderr
    _, rows = read_csv(out)
    assert sorted(r["source"] for r in rows) == sorted(str(folder / n) for n in names)
    assert all(r["status"] == "ok" for r in rows)


def test_undecodable_file_name_does_not_crash_the_run(tmp_path, mnist_bundle, mnist_test_images):
    x, _ = mnist_test_images
    folder = tmp_path / "bytes"
    folder.mkdir()
    try:
        (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(mnist_png(x[0]))
    except (OSError, UnicodeError):
        pytest.skip("file system refuses non-UTF-8 names")
    (folder / "plain.png").write_bytes(mnist_png(x[1]))
    report = tmp_path / "report"
    labels = tmp_path / "labels.csv"
    labels.write_text("source,label\n" + f"{folder / 'plain.png'},{1}\n")
    done = score_cli(folder, "--model", mnist_bundle, "--report-dir", report, "--labels", labels)
    assert done.returncode == 0, done.stderr
    _, rows = read_csv(done.stdout)
    assert sorted(r["source"] for r in rows) == [str(folder / "caf\\xe9.png"),
                                                 str(folder / "plain.png")]


def test_zip_archive_source(tmp_path, mnist_bundle, mnist_test_images):
    x, y = mnist_test_images
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(20):
            zf.writestr(f"digits/{y[i]}/img{i}.png", mnist_png(x[i]))
        zf.writestr("notes.txt", "not an image")
        zf.writestr("broken.png", b"\x89PNG broken")
    done = score_cli(archive, "--model", mnist_bundle)
    assert done.returncode == 3, done.stderr
    _, rows = read_csv(done.stdout)
    expected = sorted([f"{archive}!/digits/{y[i]}/img{i}.png" for i in range(20)]
                      + [f"{archive}!/broken.png"])
    assert [r["source"] for r in rows] == expected  # member order, names as archive!/member
    by_source = {r["source"]: r for r in rows}
    assert by_source[f"{archive}!/broken.png"]["status"] == "error"
    good = [r for r in rows if r["status"] == "ok"]
    assert len(good) == 20 and all(r["label"] == r["source"].split("/")[-2] for r in good)
    assert accuracy(good) >= 0.85
    assert "skipped 1" in done.stderr  # notes.txt


# --- broken inputs ---------------------------------------------------------------------------


def test_every_kind_of_bad_file_in_one_folder(tmp_path, mnist_bundle, mnist_test_images):
    x, _ = mnist_test_images
    root = tmp_path / "mixed"
    root.mkdir()
    good = mnist_png(x[0])
    bad = {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "random.jpg": np.random.default_rng(0).bytes(5000),
        "text.png": b"hello, I am a text file pretending to be a PNG\n" * 10,
        "blank_white.png": mnist_png(np.full((28, 28), 255, np.uint8)),
        "bomb.png": crafted_png(40_000, 40_000),  # 1.6 gigapixels declared
        "bomb_truncated.png": crafted_png(40_000, 40_000, rows=100),
        "big_blank.png": crafted_png(6_000, 6_000),  # 36 MP: over the limit, refused unread
    }
    for name, data in bad.items():
        (root / name).write_bytes(data)
    assert (root / "bomb.png").stat().st_size < 1_000_000
    os.symlink(root / "gone.png", root / "dangling.png")
    (root / "x.png").mkdir()  # a folder named like an image is walked, not scored
    (root / "x.png" / "inside.png").write_bytes(mnist_png(x[1]))
    goods = ["good1.png", "good2.png", "sub/good3.png"]
    for i, name in enumerate(goods):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(mnist_png(x[2 + i]))
    (root / "readme.txt").write_text("skipped")
    (root / ".hidden.png").write_bytes(b"")

    out = tmp_path / "out.csv"
    code, single_mb, tree_mb = measured_run(
        [root, "--model", mnist_bundle, "--out", out, "--workers", 2, "--batch-size", 2],
        tmp_path / "stdout", tmp_path / "stderr")
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    assert code == 3, stderr
    assert "Traceback" not in stderr
    _, rows = read_csv(out)
    expected = sorted([*bad, "dangling.png", "x.png/inside.png", *goods])
    assert sorted(r["source"] for r in rows) == sorted(str(root / n) for n in expected)
    status = {Path(r["source"]).relative_to(root).as_posix(): r for r in rows}
    for name in [*goods, "x.png/inside.png"]:
        assert status[name]["status"] == "ok", status[name]
    blanks = ["blank_white.png"]  # no ink: a result, not a failure (big_blank is too large)
    for name in [*bad, "dangling.png"]:
        row = status[name]
        assert row["status"] == ("blank" if name in blanks else "error"), row
        assert row["prediction"] == "" and row["confidence"] == ""
        assert row["error"].strip() and "\n" not in row["error"] and "\r" not in row["error"]
    assert "too large" in status["bomb.png"]["error"]
    assert "blank" in status["blank_white.png"]["error"]
    assert "dangling" in status["dangling.png"]["error"]
    assert f"scored {len(goods) + 1}, blank 1, failed {len(bad) - 1 + 1}," in stderr
    print(f"mixed folder: peak RSS one process {single_mb:.0f} MB, all processes {tree_mb:.0f} MB")
    assert single_mb < 1024
    assert tree_mb < 1024


@pytest.mark.parametrize("workers", [1, 2])
def test_an_image_that_outlasts_the_time_per_image_is_an_error_row(tmp_path, mnist_bundle,
                                                                   mnist_test_images, workers):
    """A small upload may cost minutes to decode; after --time-per-image it is an error row
    and the run goes on, in this process and in workers (a large image is decoded by one)."""
    from PIL import Image

    x, _ = mnist_test_images
    noise = (np.random.default_rng(0).random((3000, 4000)) * 255).astype(np.uint8)
    for folder, name, kind in (("slow", "photo.jpg", "JPEG"), ("slow", "scan.png", "PNG")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(noise).save(tmp_path / folder / name, kind)
    for i in range(3):
        (tmp_path / "slow" / f"digit{i}.png").write_bytes(mnist_png(x[i]))
    done = score_cli(tmp_path / "slow", "--model", mnist_bundle, "--workers", workers,
                     "--time-per-image", "0.02")
    assert done.returncode == 3, done.stderr
    rows = {Path(r["source"]).name: r for r in read_csv(done.stdout)[1]}
    for name in ("photo.jpg", "scan.png"):
        assert rows[name]["status"] == "error"
        assert rows[name]["error"].startswith("took too long: more than 0.02 s"), rows[name]
    assert [rows[f"digit{i}.png"]["status"] for i in range(3)] == ["ok"] * 3
    assert_usage_error(score_cli(tmp_path / "slow", "--model", mnist_bundle,
                                 "--time-per-image", "0"), mentions="--time-per-image")


def test_blanks_and_reviews_do_not_fail_the_run(tmp_path, mnist_bundle, mnist_test_images):
    x, y = mnist_test_images
    root = tmp_path / "form"
    root.mkdir()
    for i in range(12):
        (root / f"box{i:02}.png").write_bytes(mnist_png(x[i]))
    (root / "empty_box.png").write_bytes(mnist_png(np.zeros((28, 28), np.uint8)))
    plain = score_cli(root, "--model", mnist_bundle, "--out", tmp_path / "plain.csv")
    assert plain.returncode == 0, plain.stderr  # a blank alone is not a failure
    _, rows = read_csv(tmp_path / "plain.csv")
    [empty] = [r for r in rows if r["source"].endswith("empty_box.png")]
    assert (empty["status"], empty["prediction"], empty["confidence"]) == ("blank", "", "")
    assert empty["error"] == "blank image: no ink found"
    confidences = sorted({float(r["confidence"]) for r in rows if r["status"] == "ok"})
    # halfway between two confidences: the CSV rounds them to 6 decimals, the scorer does not
    middle = len(confidences) // 2
    threshold = (confidences[middle - 1] + confidences[middle]) / 2
    checked = score_cli(root, "--model", mnist_bundle, "--out", tmp_path / "checked.csv",
                        "--min-confidence", threshold)
    assert checked.returncode == 0, checked.stderr
    _, reviewed = read_csv(tmp_path / "checked.csv")
    for before, after in zip(rows, reviewed, strict=True):
        assert after["prediction"] == before["prediction"]  # review keeps the prediction
        if before["status"] == "ok":
            expected = "review" if float(before["confidence"]) < threshold else "ok"
            assert after["status"] == expected
    n_review = sum(r["status"] == "review" for r in reviewed)
    assert n_review >= 1
    assert f"scored 12 ({n_review} for review), blank 1, failed 0" in checked.stderr


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
def test_min_confidence_out_of_range_is_a_usage_error(labelled_tree, mnist_bundle, value):
    assert_usage_error(score_cli(labelled_tree, "--model", mnist_bundle, "--min-confidence",
                                 value), mentions="--min-confidence")


# --- usage errors ----------------------------------------------------------------------------


def test_unknown_option(labelled_tree, mnist_bundle):
    assert_usage_error(score_cli(labelled_tree, "--model", mnist_bundle, "--frobnicate"),
                       mentions="--frobnicate")


def test_no_source_at_all(mnist_bundle):
    assert_usage_error(score_cli("--model", mnist_bundle), mentions="SOURCES")


def test_missing_source_path(tmp_path, labelled_tree, mnist_bundle):
    out = tmp_path / "out.csv"
    done = score_cli(labelled_tree, tmp_path / "nope", "--model", mnist_bundle, "--out", out)
    assert_usage_error(done, mentions="nope")
    assert not out.exists()


def test_missing_bundle_folder(tmp_path, labelled_tree):
    assert_usage_error(score_cli(labelled_tree, "--model", tmp_path / "no-bundle"),
                       mentions="manifest.json")


def test_tampered_model_is_a_usage_error(tmp_path, labelled_tree, mnist_bundle):
    bundle = Path(shutil.copytree(mnist_bundle, tmp_path / "bundle"))
    data = bytearray((bundle / "model.tflite").read_bytes())
    data[-100] ^= 0xFF
    (bundle / "model.tflite").write_bytes(bytes(data))
    assert_usage_error(score_cli(labelled_tree / "1", "--model", bundle), mentions="SHA-256")


def test_model_that_cannot_load_is_a_usage_error(tmp_path, labelled_tree, mnist_bundle):
    """A manifest re-hashed over a broken model passes the hash check; loading it must still end
    in a usage error rather than a traceback."""
    bundle = Path(shutil.copytree(mnist_bundle, tmp_path / "bundle"))
    junk = b"this is not a flatbuffer" * 40
    (bundle / "model.tflite").write_bytes(junk)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.tflite"]["sha256"] = hashlib.sha256(junk).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out.csv"
    done = score_cli(labelled_tree / "1", "--model", bundle, "--out", out)
    assert_usage_error(done, mentions="TFLite")
    assert not out.exists()


@pytest.mark.parametrize(
    "option", [["--workers", "0"], ["--workers", "x"], ["--batch-size", "0"],
               ["--variant", "int4"]], ids=["workers-0", "workers-x", "batch-0", "variant"])
def test_bad_option_values(labelled_tree, mnist_bundle, option):
    assert_usage_error(score_cli(labelled_tree / "1", "--model", mnist_bundle, *option),
                       mentions=option[0])


def test_out_in_a_missing_folder_or_on_a_folder(tmp_path, labelled_tree, mnist_bundle):
    for out in (tmp_path / "missing" / "out.csv", tmp_path):
        done = score_cli(labelled_tree / "1", "--model", mnist_bundle, "--out", out)
        assert_usage_error(done, mentions="--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no stray temporary files


def test_only_the_summary_line_unless_verbose(tmp_path, labelled_tree, mnist_bundle):
    """LiteRT's runtime announces its XNNPACK delegate on stderr, once per process that
    scores: hidden by default, shown with --verbose (or DIGITS_VERBOSE=1)."""
    quiet = score_cli(labelled_tree / "3", "--model", mnist_bundle, "--out", tmp_path / "a.csv",
                      "--workers", 2)
    assert quiet.returncode == 0, quiet.stderr
    [line] = quiet.stderr.splitlines()
    assert line.startswith("scored ")
    loud = score_cli(labelled_tree / "3", "--model", mnist_bundle, "--out", tmp_path / "b.csv",
                     "--workers", 1, "--verbose")
    assert loud.stderr.splitlines()[0] == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    assert loud.stderr.splitlines()[-1].startswith("scored ")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_version_and_help():
    done = score_cli("--version")
    assert done.returncode == 0 and scorer.__version__ in done.stdout
    done = score_cli("--help")
    assert done.returncode == 0
    assert "Exit codes" in done.stdout
    for fragment in ("0 every input read", "3 some inputs could not be read", "2 usage error",
                     "blank (no ink", "review (below --min-confidence", "--min-confidence",
                     "--probabilities", "--labels", "--report-dir", "--workers", "--batch-size",
                     "--variant"):
        assert fragment in " ".join(done.stdout.split()), fragment


# --- light weight ----------------------------------------------------------------------------


def test_scoring_never_imports_heavy_libraries(tmp_path, mnist_bundle, mnist_test_images):
    """Run the CLI in-process in a fresh interpreter, then inspect sys.modules."""
    image = tmp_path / "seven.png"
    image.write_bytes(mnist_png(mnist_test_images[0][0]))
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['digits-score', {str(image)!r}, '--model', {str(mnist_bundle)!r},\n"
        f"            '--out', {str(tmp_path / 'out.csv')!r}, '--probabilities']\n"
        "try:\n"
        "    runpy.run_module('scorer', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code)\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} + ('boto3', 'torch', 'pandas')\n"
        "         if m in sys.modules]\n"
        "print('heavy', ','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exit 0" in done.stdout, done.stdout + done.stderr
    heavy = [line for line in done.stdout.splitlines() if line.startswith("heavy")]
    assert heavy == ["heavy "], done.stdout
    _, rows = read_csv(tmp_path / "out.csv")
    assert [r["prediction"] for r in rows] == ["7"]


# --- streaming -------------------------------------------------------------------------------



def test_100k_images_stream_in_bounded_memory(tmp_path, mnist_bundle, mnist_test_images):
    """100,000 small PNGs in nested folders of one zip (a zip is built in seconds; as many loose
    files cost this machine's file system a minute to write and remove): every one becomes a
    row, and neither the CLI nor its workers hold the run in memory."""
    n = 100_000
    data = mnist_png(mnist_test_images[0][0])
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"part{i // 10_000:02d}/batch{i // 500:03d}/img{i:06d}.png", data)
    out = tmp_path / "many.csv"
    code, single_mb, tree_mb = measured_run(
        [archive, "--model", mnist_bundle, "--out", out, "--workers", 2],
        tmp_path / "stdout", tmp_path / "stderr")
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    assert code == 0, stderr[-2000:]
    count = 0
    sources = set()
    with out.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == BASE
        for row in reader:
            count += 1
            sources.add(row["source"])
            assert row["status"] == "ok" and row["prediction"] == "7"
    assert count == n and len(sources) == n
    assert f"{archive}!/part09/batch199/img099999.png" in sources
    print(f"100k images: peak RSS one process {single_mb:.0f} MB, all {tree_mb:.0f} MB")
    assert single_mb < 500
    assert tree_mb < 500


def test_8x8_bundle_uses_its_own_geometry(labelled_tree, digits_bundle, tmp_path):
    """The input geometry comes from the manifest: the same PNGs, scored by the 8x8 model."""
    out = tmp_path / "out.csv"
    done = score_cli(labelled_tree, "--model", digits_bundle, "--out", out, "--workers", 1)
    assert done.returncode == 0, done.stderr
    _, rows = read_csv(out)
    assert len(rows) == 400 and all(r["status"] == "ok" for r in rows)
    print(f"\n8x8 model on MNIST PNGs: {accuracy(rows):.1%}")
    assert accuracy(rows) >= 0.5  # a different dataset, but clearly not chance


# --- hostile inputs: memory is counted in bytes, not inputs ----------------------------------


def png_of(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile_tree(tmp_path_factory, mnist_test_images) -> Path:
    """Small files that are large in memory: a 2 MB zip of 40 members of 48 MB of zeros,
    ~140 KB PNGs that declare 6000x6000 RGBA or 16-bit pixels, 60 KB PNGs just under the decoded
    size limit (scored); plus a few real digits."""
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("hostile") / "uploads"
    root.mkdir()
    zeros = b"\0" * (48 * 2**20)
    with zipfile.ZipFile(root / "zeros.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"member{i:02d}.png", zeros)
    rgba = png_of(Image.new("RGBA", (6000, 6000), (255, 255, 255, 0)))
    deep = png_of(Image.new("I;16", (6000, 6000), 0))
    for i in range(4):
        (root / f"rgba{i}.png").write_bytes(rgba)
        (root / f"deep{i}.png").write_bytes(deep)
    ring = Image.new("RGBA", (3400, 3400), (255, 255, 255, 0))  # 44 MB of RGBA pixels
    ImageDraw.Draw(ring).ellipse((1000, 1000, 2400, 2400), outline=(0, 0, 0, 255), width=120)
    ring = png_of(ring)
    for i in range(4):
        (root / f"ring{i}.png").write_bytes(ring)
    x, _ = mnist_test_images
    for i in range(3):
        (root / f"digit{i}.png").write_bytes(mnist_png(x[i]))
    assert sum(p.stat().st_size for p in root.iterdir()) < 4 * 2**20
    return root


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_hostile_uploads_stay_under_1_gb(tmp_path, mnist_bundle, hostile_tree, workers):
    out = tmp_path / "out.csv"
    code, single_mb, tree_mb = measured_run(
        [hostile_tree, "--model", mnist_bundle, "--out", out, "--workers", workers,
         "--batch-size", 4],  # small windows: the pool runs, several windows in flight
        tmp_path / "stdout", tmp_path / "stderr")
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    assert code == 3, stderr[-2000:]
    _, rows = read_csv(out)
    assert len(rows) == 40 + 8 + 4 + 3
    status = {Path(r["source"]).name: (r["status"], r["error"]) for r in rows}
    assert all(status[f"ring{i}.png"] == ("ok", "") for i in range(4))
    assert all(status[f"digit{i}.png"] == ("ok", "") for i in range(3))
    assert all(status[f"{kind}{i}.png"][1].startswith("image too large")
               for kind in ("rgba", "deep") for i in range(4))
    print(f"hostile uploads, {workers} workers: peak RSS one process {single_mb:.0f} MB, "
          f"all processes {tree_mb:.0f} MB")
    assert single_mb < 1024
    assert tree_mb < 1024


# --- only our decoders run ---------------------------------------------------------------------


def test_a_postscript_file_named_png_never_runs_ghostscript(tmp_path, mnist_bundle,
                                                            mnist_test_images):
    """Pillow hands EPS files to Ghostscript when `gs` is on PATH: a hostile upload must never
    reach it. A fake `gs` records any call."""
    from PIL import Image

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "gs-was-run"
    gs = fake_bin / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\nexit 1\n")
    gs.chmod(0o755)
    folder = tmp_path / "uploads"
    folder.mkdir()
    Image.fromarray(mnist_test_images[0][0]).save(folder / "digit.png", format="EPS")
    assert (folder / "digit.png").read_bytes().startswith(b"%!PS")
    (folder / "good.png").write_bytes(mnist_png(mnist_test_images[0][1]))
    environment = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "scorer", str(folder), "--model",
                           str(mnist_bundle)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=environment)
    assert done.returncode == 3, done.stderr
    _, rows = read_csv(done.stdout)
    by_name = {Path(r["source"]).name: r for r in rows}
    assert by_name["digit.png"]["status"] == "error"
    assert "unsupported image format" in by_name["digit.png"]["error"]
    assert by_name["good.png"]["status"] == "ok"
    assert not record.exists(), record.read_text()


# --- spreadsheet formulas ----------------------------------------------------------------------


def test_formula_like_cells_are_defused_unless_raw_csv(tmp_path, mnist_bundle,
                                                       mnist_test_images):
    """A source starting with = + - @ would run as a formula in a spreadsheet: by default such
    cells get a leading single quote (OWASP); --raw-csv keeps them exact for programs."""
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@SUM(1).png", "plain.png"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(mnist_png(mnist_test_images[0][i]))
    base = [sys.executable, "-m", "scorer", "--model", str(mnist_bundle)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    guarded = subprocess.run([*base, "--", *names], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120, env=environment)
    raw = subprocess.run([*base, "--raw-csv", "--", *names], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=environment)
    assert guarded.returncode == raw.returncode == 0, guarded.stderr + raw.stderr
    assert [r["source"] for r in read_csv(guarded.stdout)[1]] == \
        [f"'{name}" for name in names[:4]] + ["plain.png"]
    assert [r["source"] for r in read_csv(raw.stdout)[1]] == names


# --- checked before scoring; written as the user's umask says ----------------------------------


@pytest.mark.parametrize("change", ["classes", "geometry"])
def test_manifest_that_disagrees_with_the_model_is_a_usage_error(tmp_path, labelled_tree,
                                                                mnist_bundle, change):
    bundle = Path(shutil.copytree(mnist_bundle, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    if change == "classes":
        manifest["classes"] = [*manifest["classes"], "10"]
    else:
        manifest["input"]["geometry"]["height"] = manifest["input"]["geometry"]["width"] = 32
        manifest["input"]["shape"] = [32, 32]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out.csv"
    done = score_cli(labelled_tree / "1", "--model", bundle, "--out", out)
    assert_usage_error(done, mentions="manifest")
    assert not out.exists()


def test_report_dir_on_a_file_is_a_usage_error_before_scoring(tmp_path, labelled_tree,
                                                              mnist_bundle):
    report = tmp_path / "report"
    report.write_text("a file")
    out = tmp_path / "out.csv"
    done = score_cli(labelled_tree / "1", "--model", mnist_bundle, "--out", out,
                     "--report-dir", report)
    assert_usage_error(done, mentions="--report-dir")
    assert not out.exists()


def test_report_dir_that_cannot_be_written_is_a_usage_error_before_scoring(
        tmp_path, labelled_tree, mnist_bundle):
    """/proc is a folder no one may write in (root included, unlike a chmod): the report would
    have failed after the whole run, with a traceback, the CSV already replaced."""
    out = tmp_path / "out.csv"
    done = score_cli(labelled_tree / "1", "--model", mnist_bundle, "--out", out,
                     "--report-dir", "/proc/digits-report")
    assert_usage_error(done, mentions="cannot write in /proc")
    assert not out.exists()


def report_files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_report_that_cannot_be_written_whole_leaves_the_previous_one(tmp_path, mnist_bundle,
                                                                       mnist_test_images):
    """The report is one set: when a file of it cannot be written (here a file-size limit, as
    a full disk would), none of the new files replaces the old report; the CSV, already
    written, is kept, and one line says so (no traceback, exit 1)."""
    import resource

    x, y = mnist_test_images
    first, second = tmp_path / "first", tmp_path / "second"
    write_png_tree(first, x[:30], y[:30])
    write_png_tree(second, x[30:60], y[30:60])
    out, report = tmp_path / "out.csv", tmp_path / "report"
    assert score_cli(first, "--model", mnist_bundle, "--out", out, "--report-dir", report,
                     "--workers", 1).returncode == 0
    before = report_files_of(report)
    smallest, largest = sorted(len(data) for data in before.values())[::len(before) - 1]
    limit = max(out.stat().st_size, smallest) + 1024  # the CSV and small files fit; not all
    assert limit < largest

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "scorer", second, "--model", mnist_bundle,
                           "--out", out, "--report-dir", report, "--workers", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if not line.startswith("INFO:")]
    assert line.startswith("error: [Errno 27] File too large") and \
        line.endswith(f"the predictions were written ({out}); the report was not"), line
    assert report_files_of(report) == before  # no new file among the old ones
    assert {Path(r["source"]).parent.parent for r in read_csv(out)[1]} == {second}


def test_sigterm_while_the_report_is_built_says_the_csv_was_written(tmp_path, mnist_bundle,
                                                                    mnist_test_images,
                                                                    monkeypatch):
    """A SIGTERM after the CSV was published, while the report is built: the message says
    what is out, instead of "no output written" beside a new CSV (a real SIGTERM, sent to
    this process when the report starts)."""
    from click.testing import CliRunner

    from scorer import cli, job

    x, y = mnist_test_images
    write_png_tree(tmp_path / "digits", x[:20], y[:20])
    out, report = tmp_path / "out.csv", tmp_path / "report"
    build_report = job.build_report

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return build_report(*args, **kwargs)

    monkeypatch.setattr(job, "build_report", signalled)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        done = CliRunner().invoke(cli.main, [str(tmp_path / "digits"), "--model",
                                             str(mnist_bundle), "--out", str(out),
                                             "--report-dir", str(report), "--workers", "1"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert done.exit_code == cli.EXIT_TERMINATED, done.output
    assert f"terminated (SIGTERM): the predictions were written ({out}); the report was " \
        "not" in done.output
    assert len(read_csv(out)[1]) == 20
    assert not report.exists() or list(report.iterdir()) == []


def test_outputs_honour_the_umask(tmp_path, labelled_tree, mnist_bundle):
    out = tmp_path / "out.csv"
    report = tmp_path / "report"
    command = [sys.executable, "-m", "scorer", str(labelled_tree / "1"), "--model",
               str(mnist_bundle), "--out", str(out), "--report-dir", str(report)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.umask(0o077))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert {p.stat().st_mode & 0o777 for p in report.iterdir()} == {0o600}


# --- --out on a device or FIFO -----------------------------------------------------------------


@pytest.fixture
def null_device(tmp_path) -> Path:
    """A character device like /dev/null (same major/minor), made in tmp_path: a broken build
    must never get the chance to replace the machine's own /dev/null."""
    import stat

    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("cannot create device nodes here (not root)")
    return node


def test_out_on_a_character_device_writes_to_it(null_device, labelled_tree, mnist_bundle):
    import stat

    done = score_cli(labelled_tree / "1", "--model", mnist_bundle, "--out", null_device)
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(null_device.stat().st_mode)  # still the device, not a regular file
    assert sorted(p.name for p in null_device.parent.iterdir()) == ["null"]  # no temp files


def test_out_on_a_fifo_streams_into_it(tmp_path, labelled_tree, mnist_bundle):
    import threading

    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    done = score_cli(labelled_tree / "1", "--model", mnist_bundle, "--out", fifo)
    reader.join(timeout=60)
    assert done.returncode == 0, done.stderr
    _, rows = read_csv(received[0])
    assert len(rows) == len(list((labelled_tree / "1").iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.fifo"]
