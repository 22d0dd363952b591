"""--review-dir: copies of review and misread rows, sorted by prediction, mapped back to their
sources (local files, zip members, S3 objects and S3 zip members), written as a whole."""

from __future__ import annotations

import csv
import hashlib
import io
import pathlib
import sys
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest

from scorer import review as review_module
from scorer.pipeline import Row
from scorer.review import ReviewDirError, ReviewFolder, check_target, copy_name, safe_component
from scorer.sources.again import container, read_again

from cli_helpers import assert_usage_error, read_csv, score_cli
from digit_factory import mnist_png, zip_of
from moto_server import moto_endpoint  # noqa: F401

CLASSES = [str(i) for i in range(10)]


def review_rows(folder: pathlib.Path) -> list[dict]:
    with (folder / "review.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def leftovers(parent: pathlib.Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [
    ("scans/3/0001.png", ("0001", ".png")),
    ("forms.zip!/batch 7/Zähler: #2.JPG", ("Zahler_2", ".jpg")),
    ("s3://bucket/in/..hidden\\x.webp", ("x", ".webp")),
    ("a/.profile.png", ("profile", ".png")),
    ("a/CON.png", ("_CON", ".png")),
    ("a/nul.tar.gif", ("_nul.tar", ".gif")),
    ("a/\x00\x1b[31mred\n.png", ("_31mred_", ".png")),
    ("a/-rf.png", ("rf", ".png")),
    ("a/....png", ("png", ".png")),
    ("a/-.png", ("image", ".png")),
])
def test_copy_names_are_safe_on_any_file_system(source, expected):
    stem, ext = copy_name(source)
    assert (stem, ext) == expected
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem)


def test_long_names_are_bounded():
    stem, ext = copy_name("x/" + "é" * 300 + "a" * 500 + ".png")
    assert len(stem) <= review_module.MAX_STEM and ext == ".png"
    assert len(safe_component("1" * 200, 40, "_")) == 40


def test_member_names_point_into_their_archive():
    assert container("scans.zip!/3/001.png") == "scans.zip"
    assert container("s3://b/in/Forms.ZIP!/a!/b.png") == "s3://b/in/Forms.ZIP"
    assert container("odd!/name.png") is None
    assert container("plain/file.png") is None


# --- in-process: collisions, atomic writes --------------------------------------------------


def row(source: str, prediction: int, label: int | None = None, status: str = "review",
        confidence: float = 0.5) -> Row:
    return Row(source, prediction, confidence, status, "", label)


def test_collisions_get_deterministic_names_and_only_review_or_misread_rows_are_copied(
        tmp_path):
    images = {}
    for i, rel in enumerate(["a/7.png", "b/7.png", "c/7.PNG", "d/7.png", "ok.png", "right.png"]):
        path = tmp_path / "in" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        images[rel] = f"bytes {i}".encode()
        path.write_bytes(images[rel])
    src = {rel: str(tmp_path / "in" / rel) for rel in images}
    rows = [row(src["a/7.png"], 3), row(src["b/7.png"], 3), row(src["c/7.PNG"], 3),
            row(src["d/7.png"], 5, label=3, status="ok"),  # misread: copied
            row(src["ok.png"], 1, status="ok"),  # confident, unlabelled: not copied
            row(src["right.png"], 2, label=2, status="ok"),  # right: not copied
            Row(str(tmp_path / "blank.png"), None, None, "blank", "blank image", None)]

    def run(target):
        folder = ReviewFolder(str(target), CLASSES)
        list(folder.watch(iter(rows)))
        assert folder.write() == 4
        return review_rows(target)

    first, second = run(tmp_path / "r1"), run(tmp_path / "r2")
    assert first == second  # the same inputs give the same names
    digest = hashlib.sha256(src["b/7.png"].encode()).hexdigest()[:8]
    assert [r["file"] for r in first] == ["3/7.png", f"3/7-{digest}.png",
                                          f"3/7-{hashlib.sha256(src['c/7.PNG'].encode()).hexdigest()[:8]}.png",
                                          "5/7.png"]
    assert [r["why"] for r in first] == ["low confidence"] * 3 + ["misread"]
    for entry in first:
        assert (tmp_path / "r1" / entry["file"]).read_bytes() == \
            pathlib.Path(entry["source"]).read_bytes()
    assert first[3]["label"] == "3" and first[3]["prediction"] == "5"
    assert leftovers(tmp_path) == []


def test_an_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"x" * 10)
    folder = ReviewFolder(str(tmp_path / "review"), CLASSES)
    for i in range(3):
        folder.offer(row(str(tmp_path / f"{i}.png"), 1))

    def failing(names):
        items = read_again(names)
        yield next(items)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(review_module, "read_again", failing)
    with pytest.raises(OSError, match="No space"):
        folder.write()
    assert not (tmp_path / "review").exists()
    assert leftovers(tmp_path) == []


def test_caps_count_and_bytes(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(b"x" * 100)
    folder = ReviewFolder(str(tmp_path / "review"), CLASSES, limit=4, max_bytes=250)
    for i in range(5):
        folder.offer(row(str(tmp_path / f"{i}.png"), i))
    assert folder.write() == 2  # 4 noted, 2 fit in 250 bytes
    assert folder.left_out == 3
    rows = review_rows(tmp_path / "review")
    assert [bool(r["file"]) for r in rows] == [True, True, False, False]
    assert "used up" in rows[3]["error"]


def test_a_source_gone_since_scoring_is_listed_with_the_reason(tmp_path):
    folder = ReviewFolder(str(tmp_path / "review"), CLASSES)
    folder.offer(row(str(tmp_path / "gone.png"), 4))
    assert folder.write() == 0 and folder.unreadable == 1
    (entry,) = review_rows(tmp_path / "review")
    assert entry["file"] == "" and entry["error"]


def test_the_target_must_be_new_or_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    check_target(str(tmp_path / "empty"))
    check_target(str(tmp_path / "new" / "deeper"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.png").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    for bad in ("full", "file"):
        with pytest.raises(ReviewDirError):
            check_target(str(tmp_path / bad))
    with pytest.raises(ReviewDirError, match="local"):
        check_target("s3://bucket/review/")


# --- S3 ---------------------------------------------------------------------------------------


def test_s3_objects_and_s3_zip_members_are_copied_with_their_urls(moto_endpoint,  # noqa: F811
                                                                   tmp_path):
    import boto3

    s3 = boto3.client("s3")
    bucket = f"review-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/3/scan:1.png", Body=b"object bytes")
    members = {"x/1.png": b"member one", "y/1.png": b"member two", "z.png": b"unused"}
    s3.put_object(Bucket=bucket, Key="in/forms.zip", Body=zip_of(members))
    folder = ReviewFolder(str(tmp_path / "review"), CLASSES)
    for source, prediction in ((f"s3://{bucket}/in/3/scan:1.png", 8),
                               (f"s3://{bucket}/in/forms.zip!/x/1.png", 1),
                               (f"s3://{bucket}/in/forms.zip!/y/1.png", 1),
                               (f"s3://{bucket}/in/forms.zip!/gone.png", 1)):
        folder.offer(row(source, prediction))
    assert folder.write() == 3
    rows = {r["source"]: r for r in review_rows(tmp_path / "review")}
    assert rows[f"s3://{bucket}/in/3/scan:1.png"]["file"] == "8/scan_1.png"
    x, y = rows[f"s3://{bucket}/in/forms.zip!/x/1.png"], rows[f"s3://{bucket}/in/forms.zip!/y/1.png"]
    assert x["file"] == "1/1.png" and y["file"].startswith("1/1-")
    assert (tmp_path / "review" / x["file"]).read_bytes() == b"member one"
    assert (tmp_path / "review" / y["file"]).read_bytes() == b"member two"
    assert (tmp_path / "review" / "8" / "scan_1.png").read_bytes() == b"object bytes"
    assert rows[f"s3://{bucket}/in/forms.zip!/gone.png"]["error"]


# --- the CLI, end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def upload_tree(tmp_path_factory, mnist_test_images):
    """60 MNIST PNGs in folders 0-9, 5 of them filed under a wrong label (misread by any good
    model), and a zip of 20 more whose members share base names."""
    x, y = mnist_test_images
    root = tmp_path_factory.mktemp("uploads")
    for i in range(60):
        label = (int(y[i]) + 1) % 10 if i < 5 else int(y[i])
        path = root / "scans" / str(label) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mnist_png(x[i]))
    members = {f"{int(y[i])}/batch{i % 2}/same.png": mnist_png(x[i]) for i in range(60, 80)}
    (root / "scans" / "forms.zip").write_bytes(zip_of(members))
    return root


def test_review_dir_end_to_end(tmp_path, mnist_bundle, upload_tree):
    out, target = tmp_path / "out.csv", tmp_path / "sorted" / "review"
    done = score_cli(upload_tree / "scans", "--model", mnist_bundle, "--out", out,
                     "--min-confidence", "0.99", "--review-dir", target, "--workers", "2")
    assert done.returncode == 0, done.stderr
    _, predictions = read_csv(out)
    wanted = [r for r in predictions  # zip members are unlabelled: their folders are batches
              if r["status"] == "review" or r["label"] not in ("", r["prediction"])]
    copies = review_rows(target)
    assert [r["source"] for r in copies] == [r["source"] for r in wanted]  # input order
    assert sum(r["why"] == "misread" or "misread" in r["why"] for r in copies) >= 5
    assert any("!/" in r["source"] for r in copies), "zip members should be among them"
    names = set()
    for entry, scored in zip(copies, wanted, strict=True):
        assert entry["prediction"] == scored["prediction"] == entry["file"].split("/")[0]
        assert entry["label"] == scored["label"] and entry["status"] == scored["status"]
        assert entry["confidence"] == scored["confidence"]
        assert entry["file"].casefold() not in names
        names.add(entry["file"].casefold())
        archive, _, member = entry["source"].partition("!/")
        if member:
            import zipfile

            with zipfile.ZipFile(archive) as z:
                original = z.read(member)
        else:
            original = pathlib.Path(entry["source"]).read_bytes()
        assert (target / entry["file"]).read_bytes() == original
    assert f"{len(copies)} images copied" in done.stderr
    assert leftovers(target.parent) == []

    # the sorted folder is labelled data for the scorer: each copy read as its folder's digit
    again = score_cli(target, "--model", mnist_bundle, "--out", "-")
    _, rescored = read_csv(again.stdout)
    assert len(rescored) == len(copies)
    assert all(r["label"] == r["prediction"] for r in rescored)


def test_review_dir_that_is_not_empty_is_refused_before_scoring(tmp_path, mnist_bundle,
                                                               upload_tree):
    target = tmp_path / "review"
    target.mkdir()
    (target / "sorted-by-hand.png").write_bytes(b"x")
    out = tmp_path / "out.csv"
    done = score_cli(upload_tree / "scans", "--model", mnist_bundle, "--out", out,
                     "--review-dir", target)
    assert_usage_error(done, mentions="--review-dir")
    assert not out.exists()
    assert [p.name for p in target.iterdir()] == ["sorted-by-hand.png"]


def test_review_max_warns_about_the_rows_left_out(tmp_path, mnist_bundle, upload_tree):
    target = tmp_path / "review"
    done = score_cli(upload_tree / "scans", "--model", mnist_bundle, "--out", tmp_path / "o.csv",
                     "--min-confidence", "1.0", "--review-dir", target, "--review-max", "3")
    assert done.returncode == 0, done.stderr
    assert len(review_rows(target)) == 3
    _, rows = read_csv(tmp_path / "o.csv")
    assert all(r["status"] == "review" for r in rows)  # no int8 confidence reaches 1.0
    assert f"{len(rows) - 3} more rows to review were not copied" in done.stderr


def test_number_fields_go_to_folders_of_their_digits(tmp_path, mnist_bundle, mnist_test_images):
    """A field of three digits read in number mode, labelled wrongly on purpose: its original
    bytes go to DIR/<the digits read>/."""
    from PIL import Image

    x, _ = mnist_test_images
    field = np.concatenate([np.pad(x[i], ((4, 4), (6, 6))) for i in range(3)], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(255 - field).save(buffer, "PNG")
    (tmp_path / "field.png").write_bytes(buffer.getvalue())
    (tmp_path / "labels.csv").write_text(f"source,label\n{tmp_path / 'field.png'},000\n")
    done = score_cli(tmp_path / "field.png", "--model", mnist_bundle, "--read", "number",
                     "--labels", tmp_path / "labels.csv", "--out", tmp_path / "o.csv",
                     "--review-dir", tmp_path / "review")
    assert done.returncode == 0, done.stderr
    (entry,) = review_rows(tmp_path / "review")
    _, (scored,) = read_csv(tmp_path / "o.csv")
    assert entry["file"] == f"{scored['prediction']}/field.png" and entry["label"] == "000"
    assert (tmp_path / "review" / entry["file"]).read_bytes() == buffer.getvalue()
