"""S3 inputs against a real S3 API (moto's server over HTTP, configured only by AWS_* variables)."""

from __future__ import annotations

import itertools
import os
import pathlib
import shutil
import sys
import tempfile
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import pytest

from scorer import s3client
from scorer.sources import Input, SourceError, SourceStats, iter_inputs, iter_s3_object
from scorer.sources import base as sources_base
from scorer.sources import s3 as scorer_s3

from digit_factory import zip_of
from moto_server import moto_endpoint  # noqa: F401


@pytest.fixture
def s3(moto_endpoint):  # noqa: F811
    import boto3

    return boto3.client("s3")  # endpoint, region and credentials from the environment only


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex[:20]}"  # a fresh bucket per test: no state leaks
    s3.create_bucket(Bucket=name)
    return name


def run(*specs: str, stats: SourceStats | None = None, fail_fast: bool = False) -> list[Input]:
    stats = stats if stats is not None else SourceStats()
    return list(iter_inputs(list(specs), stats, fail_fast=fail_fast))



@pytest.fixture
def count_calls(moto_endpoint):  # noqa: F811
    """count_calls("GetObject") -> a list that grows by one per such call the scorer makes."""
    registered = []

    def start(operation: str) -> list[int]:
        calls: list[int] = []

        def handler(**_kwargs):
            calls.append(1)

        event = f"before-call.s3.{operation}"
        s3client.client().meta.events.register(event, handler)
        registered.append((event, handler))
        return calls

    yield start
    for event, handler in registered:  # the client is cached for the whole process
        s3client.client().meta.events.unregister(event, handler)


def test_prefix_over_many_pages_yields_everything_in_key_order(
    s3, bucket, monkeypatch, count_calls
):
    monkeypatch.setattr(scorer_s3, "PAGE_SIZE", 7)
    monkeypatch.setattr(scorer_s3, "MAX_IN_FLIGHT", 5)  # the window fills and slides many times
    expected = {}
    for i in range(150):
        key = f"data/{i % 10}/{i:03}.png"
        expected[key] = f"png-{i}".encode()
        s3.put_object(Bucket=bucket, Key=key, Body=expected[key])
    s3.put_object(Bucket=bucket, Key="data/README.txt", Body=b"hi")
    s3.put_object(Bucket=bucket, Key="data/7/unlabelled/x.png", Body=b"x")
    s3.put_object(Bucket=bucket, Key="other/9/not-under-prefix.png", Body=b"no")
    expected["data/7/unlabelled/x.png"] = b"x"

    list_calls = count_calls("ListObjectsV2")
    stats = SourceStats()
    rows = run(f"s3://{bucket}/data/", stats=stats)

    assert [r.name for r in rows] == [f"s3://{bucket}/{k}" for k in sorted(expected)]
    for row in rows:
        key = row.name.removeprefix(f"s3://{bucket}/")
        assert (row.data, row.error) == (expected[key], None)
        assert row.label == (None if "unlabelled" in key else int(key.split("/")[1]))
    assert (stats.skipped, stats.skipped_examples) == (1, [f"s3://{bucket}/data/README.txt"])
    assert len(list_calls) == 22  # 152 keys at 7 per page: listing really was paginated


def test_prefix_without_trailing_slash_and_whole_bucket(s3, bucket):
    s3.put_object(Bucket=bucket, Key="data/2/a.png", Body=b"a")
    s3.put_object(Bucket=bucket, Key="database/3/b.png", Body=b"b")
    # "s3://b/data" is not an object: it means the folder data/, not every key starting "data".
    assert [r.name for r in run(f"s3://{bucket}/data")] == [f"s3://{bucket}/data/2/a.png"]
    assert [r.name for r in run(f"s3://{bucket}")] == [
        f"s3://{bucket}/data/2/a.png",
        f"s3://{bucket}/database/3/b.png",
    ]


def test_folder_markers_and_hidden_keys_are_skipped_silently(s3, bucket):
    for key in ["d/", "d/4/", "d/4/a.png", "d/.DS_Store", "d/.cache/4/b.png"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"z")
    stats = SourceStats()
    assert [r.name for r in run(f"s3://{bucket}/d/", stats=stats)] == [f"s3://{bucket}/d/4/a.png"]
    assert stats.skipped == 0


def test_unicode_space_and_plus_keys(s3, bucket):
    keys = ["in/3/a b+c.png", "in/3/ünï 数字.png", "in/5/100%+.jpg", "in/5/a,b\"c'.png"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    rows = run(f"s3://{bucket}/in/")
    assert [(r.name, r.data, r.label) for r in rows] == [
        (f"s3://{bucket}/{k}", k.encode(), int(k.split("/")[1])) for k in sorted(keys)
    ]
    # The same keys given one by one as s3://bucket/key.
    single = run(*(f"s3://{bucket}/{k}" for k in keys))
    assert [(r.name, r.data, r.error) for r in single] == [
        (f"s3://{bucket}/{k}", k.encode(), None) for k in keys
    ]


def test_zip_objects_over_the_limit_are_an_error_row_not_a_full_disk(s3, bucket, monkeypatch):
    archive = zip_of({"3/a.png": b"A" * 3000, "4/b.png": b"B"})
    s3.put_object(Bucket=bucket, Key="big/batch.zip", Body=archive)
    s3.put_object(Bucket=bucket, Key="big/x.png", Body=b"X")
    monkeypatch.setenv("MAX_ZIP_BYTES", str(len(archive) - 1))
    rows = run(f"s3://{bucket}/big/")
    assert [(r.name, r.data) for r in rows] == [(f"s3://{bucket}/big/batch.zip", None),
                                                (f"s3://{bucket}/big/x.png", b"X")]
    assert rows[0].error.startswith("zip archive too large")
    monkeypatch.setenv("MAX_ZIP_BYTES", str(len(archive)))  # at the limit: expanded
    assert len(run(f"s3://{bucket}/big/batch.zip")) == 2
    monkeypatch.delenv("MAX_ZIP_BYTES")  # by default: 80 % of the temporary folder
    assert scorer_s3.max_zip_bytes() == int(0.8 * shutil.disk_usage(tempfile.gettempdir()).total)


def test_zip_objects_expand_in_place_and_spill_to_disk(s3, bucket, monkeypatch):
    monkeypatch.setattr(scorer_s3, "SPOOL_BYTES", 1024)  # force the spooled file onto disk
    spools = []

    class RecordingSpool(tempfile.SpooledTemporaryFile):
        def __exit__(self, *exc):
            spools.append(self._rolled)  # True once it moved from memory to a real temp file
            return super().__exit__(*exc)

    monkeypatch.setattr(scorer_s3.tempfile, "SpooledTemporaryFile", RecordingSpool)
    big = os.urandom(3000)  # incompressible: the zip is bigger than the spool's memory part
    archive = zip_of(
        {"3/a.png": b"A", "7/b.png": big, "notes.txt": b"n", "__MACOSX/3/._a.png": b"junk"}
    )
    assert len(archive) > 1024
    s3.put_object(Bucket=bucket, Key="p/1/first.png", Body=b"F")
    s3.put_object(Bucket=bucket, Key="p/batch.zip", Body=archive)
    s3.put_object(Bucket=bucket, Key="p/z.png", Body=b"Z")
    stats = SourceStats()
    rows = run(f"s3://{bucket}/p/", stats=stats)
    assert [(r.name, r.label, r.data) for r in rows] == [
        (f"s3://{bucket}/p/1/first.png", 1, b"F"),
        (f"s3://{bucket}/p/batch.zip!/3/a.png", 3, b"A"),
        (f"s3://{bucket}/p/batch.zip!/7/b.png", 7, big),
        (f"s3://{bucket}/p/z.png", None, b"Z"),
    ]
    assert stats.skipped_examples == [f"s3://{bucket}/p/batch.zip!/notes.txt"]
    assert spools == [True]
    # A zip key given on its own also expands.
    assert [r.name for r in run(f"s3://{bucket}/p/batch.zip")] == [
        f"s3://{bucket}/p/batch.zip!/3/a.png",
        f"s3://{bucket}/p/batch.zip!/7/b.png",
    ]


def test_corrupt_zip_object_is_one_error_row_even_when_failing_fast(s3, bucket):
    s3.put_object(Bucket=bucket, Key="bad.zip", Body=b"not a zip")
    [row] = run(f"s3://{bucket}/bad.zip", fail_fast=True)
    assert (row.name, row.data) == (f"s3://{bucket}/bad.zip", None)
    assert row.error.startswith("cannot open zip:")


def test_iter_s3_object_image_zip_and_other(s3, bucket):
    s3.put_object(Bucket=bucket, Key="in/8/x.webp", Body=b"W")
    s3.put_object(Bucket=bucket, Key="in/b.zip", Body=zip_of({"8/y.png": b"Y"}))
    s3.put_object(Bucket=bucket, Key="in/log.txt", Body=b"t")
    stats = SourceStats()
    rows = [
        *iter_s3_object(bucket, "in/8/x.webp", stats),
        *iter_s3_object(bucket, "in/b.zip", stats),
        *iter_s3_object(bucket, "in/log.txt", stats),
    ]
    assert rows == [
        Input(f"s3://{bucket}/in/8/x.webp", b"W", None, 8),
        Input(f"s3://{bucket}/in/b.zip!/8/y.png", b"Y", None, 8),
    ]
    assert (stats.skipped, stats.skipped_examples) == (1, [f"s3://{bucket}/in/log.txt"])


def test_iter_s3_object_fails_fast_by_default(s3, bucket):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="NoSuchKey"):
        list(iter_s3_object(bucket, "missing.png", SourceStats()))
    [row] = iter_s3_object(bucket, "missing.png", SourceStats(), fail_fast=False)
    assert row.data is None and "NoSuchKey" in row.error


def test_objects_over_the_size_limit_are_refused(s3, bucket, monkeypatch):
    monkeypatch.setattr(sources_base, "MAX_FILE_BYTES", 10)
    s3.put_object(Bucket=bucket, Key="q/ok.png", Body=b"x" * 10)
    s3.put_object(Bucket=bucket, Key="q/big.png", Body=b"x" * 11)
    rows = run(f"s3://{bucket}/q/")  # judged from the listing's sizes
    assert [(r.name, r.data) for r in rows] == [
        (f"s3://{bucket}/q/big.png", None),
        (f"s3://{bucket}/q/ok.png", b"x" * 10),
    ]
    assert rows[0].error.startswith("too large")
    [row] = run(f"s3://{bucket}/q/big.png")  # judged from the GET's Content-Length
    assert row.data is None and row.error.startswith("too large")


def test_missing_bucket_and_empty_prefix_are_source_errors(s3, bucket):
    s3.put_object(Bucket=bucket, Key="data/1/a.png", Body=b"a")
    missing = f"no-such-{uuid.uuid4().hex[:16]}"
    for fail_fast in (False, True):
        with pytest.raises(SourceError, match="no such bucket"):
            run(f"s3://{missing}/data/", fail_fast=fail_fast)
        with pytest.raises(SourceError, match="no objects under this prefix"):
            run(f"s3://{bucket}/nothing/", fail_fast=fail_fast)
        with pytest.raises(SourceError, match="no objects under this prefix"):
            run(f"s3://{bucket}/data/1/b.png", fail_fast=fail_fast)  # neither object nor folder


def _delete_during_listing(monkeypatch, s3, bucket, doomed):
    """Delete an object after S3 listed it but before the scorer GETs it."""
    real = scorer_s3._list_objects

    def listing(b, prefix):
        for obj in real(b, prefix):
            if obj["Key"] == doomed:
                s3.delete_object(Bucket=bucket, Key=doomed)
            yield obj

    monkeypatch.setattr(scorer_s3, "_list_objects", listing)


def test_object_deleted_after_listing_is_an_error_row_even_when_failing_fast(s3, bucket,
                                                                           monkeypatch):
    """Retrying a prefix job cannot bring a deleted object back: one row, not an aborted job."""
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"r/{i}.png", Body=b"r")
    _delete_during_listing(monkeypatch, s3, bucket, "r/2.png")
    rows = run(f"s3://{bucket}/r/", fail_fast=True)
    assert [r.data for r in rows] == [b"r", b"r", None, b"r", b"r"]
    assert rows[2].error == "object no longer exists (deleted before it was read)"


def test_a_single_missing_object_raises_when_failing_fast(s3, bucket):
    from botocore.exceptions import ClientError

    from scorer.sources import iter_s3_object

    with pytest.raises(ClientError, match="NoSuchKey"):
        list(iter_s3_object(bucket, "nope.png", SourceStats(), fail_fast=True))


def test_get_failure_is_an_error_row_when_not_failing_fast(s3, bucket, monkeypatch):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"r/4/{i}.png", Body=b"r")
    _delete_during_listing(monkeypatch, s3, bucket, "r/4/2.png")
    rows = run(f"s3://{bucket}/r/", fail_fast=False)
    assert [r.name for r in rows] == [f"s3://{bucket}/r/4/{i}.png" for i in range(5)]
    assert [r.data for r in rows] == [b"r", b"r", None, b"r", b"r"]
    assert rows[2].label == 4
    assert rows[2].error == "object no longer exists (deleted before it was read)"


def test_stopping_early_does_not_fetch_the_rest(s3, bucket, monkeypatch, count_calls):
    monkeypatch.setattr(scorer_s3, "PAGE_SIZE", 10)
    monkeypatch.setattr(scorer_s3, "MAX_IN_FLIGHT", 5)
    for i in range(100):
        s3.put_object(Bucket=bucket, Key=f"e/{i:03}.png", Body=b"e")
    gets = count_calls("GetObject")
    lists = count_calls("ListObjectsV2")
    it = iter_inputs([f"s3://{bucket}/e/"], SourceStats())
    first_three = list(itertools.islice(it, 3))
    started = time.monotonic()
    it.close()
    assert time.monotonic() - started < 5
    assert [r.name for r in first_three] == [f"s3://{bucket}/e/{i:03}.png" for i in range(3)]
    # Bounded window: GETs only for what was yielded plus one window, and lazy listing.
    assert len(gets) <= 3 + 5
    assert len(lists) == 1


def test_local_and_s3_specs_mix_in_order(s3, bucket, tmp_path):
    (tmp_path / "local.png").write_bytes(b"L")
    s3.put_object(Bucket=bucket, Key="m/0/remote.png", Body=b"R")
    rows = run(str(tmp_path / "local.png"), f"s3://{bucket}/m/")
    assert [(r.name, r.data, r.label) for r in rows] == [
        (str(tmp_path / "local.png"), b"L", None),
        (f"s3://{bucket}/m/0/remote.png", b"R", 0),
    ]


def test_client_uses_standard_retries_and_the_environment_endpoint(moto_endpoint):  # noqa: F811
    client = s3client.client()
    assert client is s3client.client()  # cached: one per process
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.endpoint_url == moto_endpoint  # from AWS_ENDPOINT_URL alone


def test_window_is_also_bounded_by_bytes(s3, bucket, monkeypatch, count_calls):
    monkeypatch.setattr(scorer_s3, "MAX_IN_FLIGHT_BYTES", 10)  # objects are 4 bytes: 3 fit
    for i in range(40):
        s3.put_object(Bucket=bucket, Key=f"w/{i:02}.png", Body=b"wwww")
    gets = count_calls("GetObject")
    it = iter_inputs([f"s3://{bucket}/w/"], SourceStats())
    first_three = list(itertools.islice(it, 3))
    it.close()
    assert [r.data for r in first_three] == [b"wwww"] * 3
    assert len(gets) <= 3 + 3
