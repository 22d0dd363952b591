"""Local inputs: files, folders and zip archives, with real files on disk."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from scorer import s3client, sources
from scorer.sources import Input, SourceError, SourceStats, iter_inputs, local
from scorer.sources import base as sources_base

from digit_factory import zip_of

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, data: bytes | None = None) -> bytes:
    """Create a file (and its folders); the default content is unique to the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = data if data is not None else f"img:{path.name}".encode()
    path.write_bytes(content)
    return content


def run(*specs: str | Path, stats: SourceStats | None = None) -> list[Input]:
    return list(iter_inputs([str(s) for s in specs], stats if stats is not None else SourceStats()))



@pytest.fixture
def no_hang():
    """Fail instead of hanging forever if something blocks (e.g. opening a FIFO)."""
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked for 10 s"))
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- folders ---------------------------------------------------------------------------------


def test_folder_is_walked_recursively_in_sorted_order_with_labels(tmp_path):
    root = tmp_path / "data"
    contents = {
        rel: write(root / rel)
        for rel in ["3/b.png", "3/a.png", "10/c.png", "7/sub/d.jpg", "x.PNG", "0/e.jpeg"]
    }
    rows = run(root)
    assert [r.name for r in rows] == [
        str(root / rel) for rel in ["0/e.jpeg", "10/c.png", "3/a.png", "3/b.png", "7/sub/d.jpg"]
    ] + [str(root / "x.PNG")]
    # Only an immediate parent named exactly one digit is a label ("10" and "sub" are not).
    assert [r.label for r in rows] == [0, None, 3, 3, None, None]
    assert [r.error for r in rows] == [None] * 6
    for row in rows:
        assert row.data == contents[os.path.relpath(row.name, root)]


def test_names_are_joined_onto_the_spec_as_given(tmp_path, monkeypatch):
    write(tmp_path / "data" / "5" / "a.png")
    monkeypatch.chdir(tmp_path)
    assert [r.name for r in run("data")] == [os.path.join("data", "5", "a.png")]
    assert [(r.name, r.label) for r in run("data/5/a.png")] == [("data/5/a.png", 5)]


def test_non_images_are_skipped_and_counted_hidden_entries_silently(tmp_path):
    root = tmp_path / "data"
    write(root / "3" / "a.png")
    write(root / "notes.txt")
    write(root / "3" / "readme.md")
    write(root / "3" / "noext")
    write(root / ".DS_Store")
    write(root / ".git" / "objects" / "a.png")
    write(root / "3" / ".hidden.png")
    stats = SourceStats()
    rows = run(root, stats=stats)
    assert [r.name for r in rows] == [str(root / "3" / "a.png")]
    assert stats.skipped == 3
    assert sorted(stats.skipped_examples) == sorted(
        str(root / p) for p in ["notes.txt", "3/readme.md", "3/noext"]
    )


def test_skipped_examples_are_capped_but_all_are_counted(tmp_path):
    for i in range(12):
        write(tmp_path / f"f{i:02}.txt")
    stats = SourceStats()
    assert run(tmp_path, stats=stats) == []
    assert stats.skipped == 12
    assert stats.skipped_examples == [str(tmp_path / f"f{i:02}.txt") for i in range(5)]


def test_explicit_files_image_broken_image_and_non_image(tmp_path):
    good = tmp_path / "4" / "good.png"
    broken = tmp_path / "broken.jpg"
    other = tmp_path / "model.tflite"
    write(good)
    write(broken, b"definitely not a jpeg")
    write(other)
    stats = SourceStats()
    rows = run(good, broken, other, stats=stats)
    # Decoding is not this module's job: a broken image is still an input, with its bytes.
    assert [(r.name, r.label, r.data) for r in rows] == [
        (str(good), 4, b"img:good.png"),
        (str(broken), None, b"definitely not a jpeg"),
    ]
    assert (stats.skipped, stats.skipped_examples) == (1, [str(other)])


def test_symlink_cycle_terminates_and_each_file_is_yielded_once(tmp_path, no_hang):
    root = tmp_path / "data"
    write(root / "3" / "a.png")
    write(root / "3" / "deeper" / "b.png")
    (root / "3" / "deeper" / "up").symlink_to("..")  # a link to its grandparent: a cycle
    (root / "3" / "loop").symlink_to(".")  # a link to its own folder
    (root / "zz-same-as-3").symlink_to("3")  # a second way into an already walked folder
    rows = run(root)
    assert [r.name for r in rows] == [str(root / "3/a.png"), str(root / "3/deeper/b.png")]


def test_symlinked_folder_is_followed(tmp_path):
    write(tmp_path / "elsewhere" / "6" / "a.png")
    root = tmp_path / "data"
    root.mkdir()
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    rows = run(root)
    assert [(r.name, r.label, r.error) for r in rows] == [(str(root / "linked/6/a.png"), 6, None)]


def test_dangling_symlink_is_an_error_row(tmp_path):
    root = tmp_path / "data"
    write(root / "2" / "ok.png")
    (root / "2" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "2" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    stats = SourceStats()
    rows = run(root, stats=stats)
    assert [(r.name, r.data, r.error, r.label) for r in rows] == [
        (str(root / "2/gone.png"), None, "dangling symlink", 2),
        (str(root / "2/ok.png"), b"img:ok.png", None, 2),
    ]
    assert stats.skipped == 1  # the dangling .txt link is just a non-image
    # Given explicitly, a dangling link "exists" (it is not a usage error) and is an error row.
    [row] = run(root / "2" / "gone.png")
    assert row.error == "dangling symlink"


def test_fifo_named_like_an_image_is_an_error_row_and_does_not_block(tmp_path, no_hang):
    root = tmp_path / "data"
    write(root / "1" / "a.png")
    os.mkfifo(root / "1" / "pipe.png")
    os.mkfifo(root / "pipe.zip")
    rows = run(root)
    assert [(r.name, r.error) for r in rows] == [
        (str(root / "1/a.png"), None),
        (str(root / "1/pipe.png"), "not a regular file (FIFO)"),
        (str(root / "pipe.zip"), "not a regular file (FIFO)"),
    ]
    [row] = run(root / "1" / "pipe.png")  # explicitly given: same
    assert (row.data, row.error, row.label) == (None, "not a regular file (FIFO)", 1)


def test_device_is_an_error_row(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")  # reading would never end; it must not even be read
    [row] = run(link)
    assert (row.data, row.error) == (None, "not a regular file (special)")


def test_folder_named_like_an_image_is_walked_not_read(tmp_path):
    root = tmp_path / "data"
    write(root / "x.png" / "8" / "inner.png")
    rows = run(root)
    assert [(r.name, r.label, r.error) for r in rows] == [
        (str(root / "x.png/8/inner.png"), 8, None)
    ]
    # The low-level reader refuses a directory (e.g. one swapped in after listing).
    row = local._read_local(str(root / "x.png"), None)
    assert (row.data, row.error) == (None, "not a regular file (directory)")


def test_unreadable_folder_is_an_error_row(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write(root / "1" / "a.png")
    write(root / "2" / "b.png")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith(os.sep + "1"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    # chmod 000 does not stop root (tests may run as root), so simulate the refusal.
    monkeypatch.setattr(local.os, "scandir", scandir)
    rows = run(root)
    assert [(r.name, r.error) for r in rows] == [
        (str(root / "1"), "cannot list folder: Permission denied"),
        (str(root / "2/b.png"), None),
    ]


def test_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_base, "MAX_FILE_BYTES", 100)
    write(tmp_path / "at-limit.png", b"x" * 100)
    write(tmp_path / "over.png", b"x" * 101)
    rows = run(tmp_path)
    assert rows[0] == Input(str(tmp_path / "at-limit.png"), b"x" * 100, None, None)
    assert rows[1].data is None and rows[1].error.startswith("too large")


def test_unusual_file_names_are_kept_exactly(tmp_path):
    names = ["a,b.png", 'say "hi".png', "it's.png", "ünïcødé-数字.png", "new\nline.png", " sp .png"]
    for name in names:
        write(tmp_path / "9" / name)
    rows = run(tmp_path)
    assert [r.name for r in rows] == [str(tmp_path / "9" / n) for n in sorted(names)]
    assert all(r.label == 9 and r.data == f"img:{Path(r.name).name}".encode() for r in rows)


# --- validation --------------------------------------------------------------------------------


def test_missing_path_raises_source_error_before_anything_is_yielded(tmp_path):
    write(tmp_path / "ok.png")
    missing = tmp_path / "nope"
    # Raised by the call itself, not on first next(): the CLI maps it to a usage error.
    with pytest.raises(SourceError, match="nope: no such file or directory"):
        iter_inputs([str(tmp_path / "ok.png"), str(missing)], SourceStats())
    assert issubclass(SourceError, ValueError)


def test_bad_s3_url_is_a_source_error():
    with pytest.raises(SourceError, match="not an s3://bucket/key URL"):
        sources.check_specs(["s3://"])


def test_check_specs_accepts_existing_things_and_returns_a_list(tmp_path):
    write(tmp_path / "a.png")
    specs = (s for s in [str(tmp_path), str(tmp_path / "a.png"), "s3://bucket/prefix/"])
    assert sources.check_specs(specs) == [
        str(tmp_path),
        str(tmp_path / "a.png"),
        "s3://bucket/prefix/",
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://b/p/x.png", ("b", "p/x.png")),
        ("s3://my.bucket-1/", ("my.bucket-1", "")),
        ("s3://b", ("b", "")),
        ("S3://b/ä b+c.png", ("b", "ä b+c.png")),
    ],
)
def test_parse_s3_url(url, expected):
    assert s3client.is_s3(url)
    assert s3client.parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["s3://", "s3:///key", "http://b/k", "b/k", "s3://b c/k"])
def test_parse_s3_url_rejects_bad_urls(url):
    with pytest.raises(ValueError):
        s3client.parse_s3_url(url)


def test_is_s3_is_false_for_local_paths():
    assert not s3client.is_s3("data/s3/x.png")
    assert not s3client.is_s3("s3:/b/k")


# --- zips ----------------------------------------------------------------------------------------


def test_zip_members_with_labels_skips_and_silent_junk(tmp_path):
    archive = tmp_path / "batch.zip"
    archive.write_bytes(
        zip_of(
            {
                "digits/": b"",
                "digits/3/": b"",
                "digits/3/b.png": b"B",
                "digits/3/a.png": b"A",
                "digits/12/c.jpg": b"C",
                "top.gif": b"T",
                "digits/notes.txt": b"n",
                "inner.zip": zip_of({"3/x.png": b"X"}),
                "__MACOSX/digits/3/._a.png": b"junk",
                "digits/.DS_Store": b"junk",
            }
        )
    )
    stats = SourceStats()
    rows = run(archive, stats=stats)
    assert [(r.name, r.label, r.data, r.error) for r in rows] == [
        (f"{archive}!/digits/12/c.jpg", None, b"C", None),
        (f"{archive}!/digits/3/a.png", 3, b"A", None),
        (f"{archive}!/digits/3/b.png", 3, b"B", None),
        (f"{archive}!/top.gif", None, b"T", None),
    ]
    # Non-images are counted (zips are not expanded inside zips); folders and junk are not.
    assert stats.skipped == 2
    assert sorted(stats.skipped_examples) == [
        f"{archive}!/digits/notes.txt",
        f"{archive}!/inner.zip",
    ]


def test_zip_inside_a_folder_is_expanded(tmp_path):
    write(tmp_path / "a" / "1" / "x.png")
    (tmp_path / "b.zip").write_bytes(zip_of({"2/y.png": b"Y"}))
    write(tmp_path / "c.png")
    rows = run(tmp_path)
    assert [(r.name, r.label) for r in rows] == [
        (str(tmp_path / "a/1/x.png"), 1),
        (f"{tmp_path / 'b.zip'}!/2/y.png", 2),
        (str(tmp_path / "c.png"), None),
    ]


def test_corrupt_and_truncated_zips_are_one_error_row_each_and_the_job_goes_on(tmp_path):
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip at all" * 10)
    truncated = tmp_path / "truncated.zip"
    whole = zip_of({f"3/{i}.png": os.urandom(200) for i in range(5)}, zipfile.ZIP_STORED)
    truncated.write_bytes(whole[: len(whole) // 2])
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    write(tmp_path / "z.png")
    rows = run(garbage, truncated, empty, tmp_path / "z.png")
    assert [r.name for r in rows] == [
        str(garbage),
        str(truncated),
        str(empty),
        str(tmp_path / "z.png"),
    ]
    assert all(r.error.startswith("cannot open zip:") and r.data is None for r in rows[:3])
    assert rows[3].error is None


def test_a_zip_of_too_many_members_is_one_error_row_before_its_directory_is_parsed(
        tmp_path, monkeypatch):
    """zipfile holds about 0.6 KB per member before any is read (3M members took 1.7 GB): more
    than MAX_ZIP_MEMBERS are refused, counted from the directory itself, not from the end
    record's count, which may lie; a directory over MAX_DIRECTORY_BYTES is refused unread."""
    from scorer.sources import zips

    monkeypatch.setattr(zips, "MAX_ZIP_MEMBERS", 10)
    members = {f"3/{i:02d}.png": bytes(10) for i in range(11)}
    at_limit, over = tmp_path / "ten.zip", tmp_path / "eleven.zip"
    at_limit.write_bytes(zip_of(dict(list(members.items())[:10])))
    over.write_bytes(zip_of(members))
    liar = tmp_path / "liar.zip"  # the end record says 1 member (both of its counts)
    end = over.read_bytes().rindex(b"PK\x05\x06")
    liar.write_bytes(over.read_bytes()[:end + 8] + struct.pack("<HH", 1, 1)
                     + over.read_bytes()[end + 12:])
    assert len(zipfile.ZipFile(liar).infolist()) == 11  # zipfile reads all eleven regardless
    rows = run(at_limit, over, liar)
    assert len(rows) == 12 and all(r.error is None for r in rows[:10])
    assert [r.name for r in rows[10:]] == [str(over), str(liar)]
    for row in rows[10:]:
        assert row.error == "zip holds too many members: 11 (limit 10); split the archive or " \
            "unzip it"
    monkeypatch.setattr(zips, "MAX_DIRECTORY_BYTES", 100)
    [row] = run(at_limit)
    assert row.error.startswith("zip directory too large: 0 MB (limit 0 MB)")


def test_zip_member_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_base, "MAX_FILE_BYTES", 1000)
    archive = tmp_path / "big.zip"
    # Zeros compress to almost nothing: the compressed size must not be what is checked.
    archive.write_bytes(zip_of({"1/bomb.png": bytes(5000), "1/ok.png": bytes(1000)}))
    rows = run(archive)
    assert [(r.name, r.data, r.error is None) for r in rows] == [
        (f"{archive}!/1/bomb.png", None, False),
        (f"{archive}!/1/ok.png", bytes(1000), True),
    ]
    assert rows[0].error.startswith("too large (0.0 MB") and rows[0].label == 1


def _patch_central_directory(data: bytes, offset_in_entry: int, fmt: str, value: int) -> bytes:
    """Overwrite one field of the (single) central-directory entry of a zip."""
    at = data.index(b"PK\x01\x02") + offset_in_entry
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt) :]


def test_zip_member_whose_header_lies_about_its_size_is_an_error_row(tmp_path):
    honest = zip_of({"bomb.png": bytes(60_000)})
    # Central directory: uncompressed size is the 4 bytes at offset 24.
    archive = tmp_path / "liar.zip"
    archive.write_bytes(_patch_central_directory(honest, 24, "<I", 100))
    [row] = run(archive)
    assert row.data is None
    assert row.error.startswith("cannot read zip member:")


def test_encrypted_zip_member_is_an_error_row(tmp_path):
    plain = zip_of({"5/secret.png": b"S"})
    # zipfile cannot write encrypted zips; set the "encrypted" flag bit (offset 8) by hand.
    archive = tmp_path / "locked.zip"
    archive.write_bytes(_patch_central_directory(plain, 8, "<H", 0x1))
    [row] = run(archive)
    assert (row.name, row.data, row.error, row.label) == (
        f"{archive}!/5/secret.png",
        None,
        "encrypted zip member",
        5,
    )


def test_zip_member_names_are_shown_as_stored(tmp_path):
    names = ["7/a,b.png", '7/"q".png', "7/ünï 数字.png", "7/new\nline.png", "../../etc/evil.png"]
    archive = tmp_path / "names.zip"
    archive.write_bytes(zip_of({n: n.encode() for n in names}))
    rows = run(archive)
    assert [r.name for r in rows] == [f"{archive}!/{n}" for n in sorted(names)]
    assert [r.data for r in rows] == [n.encode() for n in sorted(names)]
    assert not (tmp_path.parent / "etc").exists()  # nothing was extracted anywhere


# --- streaming ---------------------------------------------------------------------------------


def test_files_are_read_lazily_one_at_a_time(tmp_path):
    for name in ["a.png", "b.png", "c.png"]:
        write(tmp_path / name)
    it = iter_inputs([str(tmp_path)], SourceStats())
    first = next(it)
    # After the first row, later files can still change or vanish: they have not been read.
    (tmp_path / "b.png").write_bytes(b"changed")
    (tmp_path / "c.png").unlink()
    rest = list(it)
    assert first.data == b"img:a.png"
    assert rest[0].data == b"changed"
    assert (rest[1].name, rest[1].data) == (str(tmp_path / "c.png"), None)
    assert rest[1].error == "file not found (removed after listing?)"


def test_memory_stays_flat_over_20000_files(tmp_path):
    payload = b"x" * 2000
    for d in range(20):
        folder = tmp_path / str(d % 10) / f"batch{d:02}"
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / f"{i:04}.png").write_bytes(payload)
    tracemalloc.start()
    try:
        count = total = 0
        for row in iter_inputs([str(tmp_path)], SourceStats()):
            count += 1
            total += len(row.data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000 and total == 20_000 * len(payload)
    # 40 MB of contents went through; holding them (or all rows) would blow well past this.
    assert peak < 10 * 1024 * 1024, f"peak {peak / 2**20:.1f} MB"


def test_local_sources_import_no_heavy_or_aws_libraries(tmp_path):
    write(tmp_path / "3" / "a.png")
    code = (
        "import sys\n"
        "from scorer.sources import iter_inputs, SourceStats\n"
        f"rows = list(iter_inputs([{str(tmp_path)!r}], SourceStats()))\n"
        "assert len(rows) == 1, rows\n"
        "bad = {'boto3', 'botocore', 'tensorflow', 'keras', 'sklearn', 'scipy', 'matplotlib'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
