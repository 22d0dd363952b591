"""Scale-out prefix jobs: many batches of keys scored in parallel, then merged into one CSV and one
report, byte for byte what a single prefix job (`s3_jobs.score_prefix`) would have written.

Step Functions' Distributed Map lists the prefix and hands the function batches of listed keys;
this module knows nothing about Lambda or Step Functions beyond the shape of that data. Each
batch becomes one *part*, under the output prefix (S3 never notifies the function about it):

    <output prefix>.jobs/<job id>/parts/<part id>.csv            rows, always a label column
    <output prefix>.jobs/<job id>/parts/<part id>.examples.json  report thumbnail candidates
    <output prefix>.jobs/<job id>/parts/<part id>.json           counts, keys, read mode,
                                                                 labelled arrays
    <output prefix>.jobs/<job id>/merged.json                    the merge's result

The part id is a hash of the batch's keys and a part holds no timings, so a retried (or doubly
run) batch overwrites its own part with the same bytes: rows are never duplicated. The `.json` is
written last; only parts that have one are merged. The merge streams (see `merge_job`).

The function's READ/LENGTH (`Config.numbers`) apply to every batch: in number mode each object
is a field, a row's prediction and label are digit strings and the CSV ends with a digits
column. Each part records the mode it was scored in, and the merge refuses a job whose parts
disagree with each other or with the function.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import posixpath
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from scorer import report, sources
from scorer.bundle import Bundle
from scorer.job import Tally, build_report, run_job, run_summary
from scorer.outputs import LABEL_COLUMN, S3Upload, csv_header, write_report
from scorer.s3_jobs import Config, job_options, prefix_outputs, read_mode, run_info
from scorer.s3client import (
    FETCH_WORKERS,
    delete_under,
    fetch_in_order,
    get_json,
    list_objects,
    parse_s3_url,
    put_json,
    s3_url,
)
from scorer.sources import SourceStats

PART_FORMAT = 1
JOB_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,79}")  # an execution name, path-safe
PART_META = re.compile(r"[0-9a-f]{32}\.json")  # both matched whole (fullmatch: no "\n" after)
COUNTS = ("rows", "objects", "skipped", "scored", "review", "blank", "failed", "labelled",
          "correct")


# ---------------------------------------------------------------- naming


def job_prefix(job_id: str, config: Config) -> str:
    """`<output prefix>.jobs/<job id>/`: where a job's parts live until the merge."""
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ValueError(f"job_id must be 1-80 letters, digits, '.', '_' or '-', got {job_id!r}")
    return f"{config.output_prefix}.jobs/{job_id}/"


def job_source(source: str, config: Config) -> tuple[str, str]:
    """(bucket, prefix) of a job's `s3://bucket/prefix/` source, which must lie under the input
    prefix, in the input bucket when one is configured (the function may read nothing else;
    IAM and the state machine refuse it too). A missing final "/" is added."""
    bucket, prefix = parse_s3_url(source)
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    if config.input_bucket is not None and bucket != config.input_bucket:
        raise ValueError(f"{source}: a scale-out job's source must lie in "
                         f"s3://{config.input_bucket}/{config.input_prefix}")
    if not prefix.startswith(config.input_prefix):
        raise ValueError(f"{source}: a scale-out job's source must lie under "
                         f"s3://<bucket>/{config.input_prefix}")
    return bucket, prefix


def part_id(keys: list[str]) -> str:
    """Deterministic from the batch's keys (in any order), so a retried batch overwrites its
    own part instead of adding a second one. Each key is hashed with its length in front: keys
    may hold any character, newlines included, so no separator could keep two lists apart."""
    digest = hashlib.sha256()
    for key in sorted(set(keys)):
        data = key.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------- one batch -> one part


def score_batch(batch_input: dict, items: list[dict], bundle: Bundle,
                config: Config) -> tuple[dict, Tally]:
    """Score the listed objects of one Distributed Map batch into one part.

    `batch_input` is `{"job_id": ..., "source": "s3://bucket/prefix/"}`; `items` are
    ListObjectsV2 entries (`Key`, `Size`, ...). Keys are scored in key order, exactly as a prefix
    job reads them: folder markers and hidden entries skipped, other non-images counted as
    skipped, zips expanded. Keys outside the source prefix are ignored (and counted). S3 errors
    raise, so that Step Functions retries the batch.
    """
    job_id, source = batch_input["job_id"], batch_input["source"]
    bucket, prefix = job_source(source, config)
    out_bucket = config.output_bucket or bucket
    keys = [str(item["Key"]) for item in items]
    name = part_id(keys)
    base = f"{job_prefix(job_id, config)}parts/{name}"
    listed = sorted({item["Key"]: item for item in items if item["Key"].startswith(prefix)}
                    .values(), key=lambda item: item["Key"])
    stats = SourceStats()
    collector = report.ExampleCollector()
    tally = run_job(sources.iter_listed(bucket, prefix, listed, stats, fail_fast=True), bundle,
                    s3_url(out_bucket, f"{base}.csv"),
                    options=job_options(config, label_column=True), collector=collector)
    examples = None
    if collector.seen:
        examples = f"{base}.examples.json"
        put_json(out_bucket, examples, {"examples": [_example_json(index, example) for
                                                     index, example in collector.kept()]})
    meta = {
        "format": PART_FORMAT, "job_id": job_id, "source": source, "part": name,
        "csv": f"{base}.csv", "examples": examples,
        "first_key": listed[0]["Key"] if listed else None,
        "last_key": listed[-1]["Key"] if listed else None,
        "rows": tally.total, "objects": len(listed), "skipped": stats.skipped,
        "ignored": len(set(keys)) - len(listed), **tally.counts(),
        "labelled": tally.labelled, "correct": tally.correct, "any_label": tally.any_label,
        **read_mode(config), "model": model_of(bundle), **_pack_labelled(tally),
    }
    put_json(out_bucket, f"{base}.json", meta)  # last: the part counts from now on
    result = {"part": s3_url(out_bucket, f"{base}.json"),
              **{k: meta[k] for k in ("objects", "rows", "skipped", "ignored", "scored",
                                      "review", "blank", "failed")}}
    return result, tally


def _pack_labelled(tally: Tally) -> dict:
    """The labelled rows' true classes, predictions and confidences, in row order. Digits:
    int8, int8 and float32 arrays in base64. Number fields: the digit strings as JSON lists (they
    vary in length; leading zeros count) and the field confidences as float64 (a product of the
    digits' confidences, which float32 would round)."""
    if tally.fields:
        return {"y_true": list(tally.y_true), "y_pred": list(tally.y_pred),
                "confidence": _pack(tally.confidence, np.float64)}
    return {"y_true": _pack(tally.y_true, np.int8), "y_pred": _pack(tally.y_pred, np.int8),
            "confidence": _pack(tally.confidence, np.float32)}


def _unpack_part(meta: dict) -> dict:
    """A part's metadata with its labelled values unpacked as they arrive, so the merge holds
    compact arrays (6 bytes a labelled digit), never the base64 text: int8 classes and float32
    confidences (digits), or lists of digit strings and float64 confidences (fields)."""
    if not isinstance(meta.get("confidence"), str):
        return meta
    if meta.get("read", "digit") != "digit":
        return {**meta, "confidence": _unpack(meta["confidence"], np.float64)}
    return {**meta, "y_true": _unpack(meta["y_true"], np.int8),
            "y_pred": _unpack(meta["y_pred"], np.int8),
            "confidence": _unpack(meta["confidence"], np.float32)}


def _unpack_labelled(parts: list[dict], fields: bool) -> tuple:
    """The unpacked labelled values of every part, concatenated in part order: (y_true, y_pred,
    confidence), the classes as int8 arrays (digits) or lists of digit strings (fields)."""
    if fields:
        y_true = [text for p in parts for text in p["y_true"]]
        y_pred = [text for p in parts for text in p["y_pred"]]
        return y_true, y_pred, np.concatenate([p["confidence"] for p in parts])
    return tuple(np.concatenate([p[name] for p in parts])
                 for name in ("y_true", "y_pred", "confidence"))


def _pack(values: list, dtype) -> str:
    # Little-endian raw bytes in base64: class indices fit int8 (a digit model has 10 classes),
    # and confidences are float32 in the model's output already, so nothing is lost.
    return base64.b64encode(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
                            .tobytes()).decode("ascii")


def _unpack(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


def _example_json(index: int, example: report.Example) -> dict:
    # label and prediction: class indices (digits) or digit strings (fields, kept as text so
    # that leading zeros stay); cuts: a field's digits' (x0, x1) in the thumbnail.
    return {"index": index, "source": example.source, "label": example.label,
            "prediction": example.prediction, "confidence": example.confidence,
            "shape": list(example.image.shape),
            "image": base64.b64encode(np.ascontiguousarray(example.image, np.uint8).tobytes())
            .decode("ascii"),
            "cuts": [list(cut) for cut in example.cuts]}


def _example(doc: dict) -> report.Example:
    image = np.frombuffer(base64.b64decode(doc["image"]), np.uint8).reshape(doc["shape"])
    return report.Example(doc["source"], doc["label"], doc["prediction"], doc["confidence"],
                          image, tuple(tuple(cut) for cut in doc.get("cuts", ())))


# ---------------------------------------------------------------- parts -> one CSV and report


def merge_job(merge: dict, bundle: Bundle, config: Config) -> dict:
    """Merge a job's parts into `prefix_outputs(source)`: one CSV, one report; then delete them.

    `merge` is `{"job_id": ..., "source": ...}` as in the batches. Streams: the CSV goes up as a
    multipart upload of the parts' rows in key order (parts sorted by first key; their key
    ranges must not overlap), at most FETCH_AHEAD_BYTES of parts fetched ahead. Only the
    labelled predictions are held, as compact numpy arrays (int8, int8, float32: 6 bytes a
    row), for the report's metrics and coverage (about 23 bytes a row at their peak); its
    thumbnails come from the few parts that hold the images shown. Idempotent: once
    `merged.json` is written, a rerun only finishes deleting the parts and returns the same
    result.
    """
    job_id, source = merge["job_id"], merge["source"]
    bucket, _ = job_source(source, config)
    out_bucket = config.output_bucket or bucket
    jobs = job_prefix(job_id, config)
    done = get_json(out_bucket, f"{jobs}merged.json")
    if done is not None:
        return {**done, "parts_deleted": delete_under(out_bucket, f"{jobs}parts/")}
    parts = in_key_order(read_parts(out_bucket, f"{jobs}parts/"))
    if not parts:
        raise ValueError(f"no parts under s3://{out_bucket}/{jobs}parts/: nothing was listed "
                         "under the source, or the job id is wrong")
    check_read_mode(parts, config, f"s3://{out_bucket}/{jobs}parts/")
    check_model(parts, bundle, f"s3://{out_bucket}/{jobs}parts/")
    fields = config.numbers is not None
    out, report_dir = prefix_outputs(source, config)
    any_label = any(part["any_label"] for part in parts)
    write_csv(out_bucket, parts, out, bundle.labels, any_label, fields)
    totals = {name: sum(part[name] for part in parts) for name in COUNTS}
    tally = Tally.of_counts(totals, any_label, fields)
    if tally.labelled:
        files = merged_report_files(out_bucket, parts, bundle, source, config, tally)
        write_report(files, report_dir)
    result = {"output": out, "report": report_dir if tally.labelled else None,
              "parts": len(parts), **totals, "accuracy": tally.accuracy}
    put_json(out_bucket, f"{jobs}merged.json", result)
    return {**result, "parts_deleted": delete_under(out_bucket, f"{jobs}parts/")}


def read_parts(bucket: str, prefix: str) -> list[dict]:
    """Every finished part's metadata (its `.json`), fetched concurrently, its labelled values
    unpacked, and the size of its CSV (`csv_bytes`, from the listing)."""
    sizes = dict(list_objects(bucket, prefix))
    keys = [key for key in sizes if PART_META.fullmatch(posixpath.basename(key))]

    def read(key: str) -> dict:
        meta = get_json(bucket, key)
        if meta is None or meta.get("format") != PART_FORMAT:
            raise ValueError(f"s3://{bucket}/{key}: not a part of format {PART_FORMAT}")
        return {**_unpack_part(meta), "csv_bytes": sizes.get(meta["csv"], 0)}

    with ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="part-meta") as pool:
        return list(pool.map(read, keys))


def check_read_mode(parts: list[dict], config: Config, where: str) -> None:
    """Every part must have been scored as the function reads now (READ and LENGTH): their rows
    and labelled arrays differ in kind between modes, and one CSV holds one kind. Parts written
    before parts recorded their mode were scored as digits."""
    def mode(meta: dict) -> str:
        if meta.get("read", "digit") == "digit":
            return "READ=digit"
        return f"READ=number LENGTH={meta.get('length') or '(any)'}"

    found: dict[str, int] = {}
    for part in parts:
        found[mode(part)] = found.get(mode(part), 0) + 1
    expected = mode(read_mode(config))
    if len(found) > 1:
        raise ValueError(f"the parts under {where} were scored in different read modes ("
                         + ", ".join(f"{n} with {m}" for m, n in sorted(found.items()))
                         + "): the function's READ or LENGTH changed during the job; run the "
                         f"job again under a new name (the function now has {expected})")
    [scored] = found
    if scored != expected:
        raise ValueError(f"the parts under {where} were scored with {scored} but the function "
                         f"now has {expected}: merge with the configuration the job was scored "
                         "with, or run the job again under a new name")


def model_of(bundle: Bundle) -> dict:
    """What a part records of the model that scored it: the model file's SHA-256 (from the
    verified manifest) and the class names its rows use."""
    return {"sha256": bundle.manifest.files[bundle.model_file].sha256,
            "labels": list(bundle.labels)}


def check_model(parts: list[dict], bundle: Bundle, where: str) -> None:
    """Every part must have been scored by the model the function has now: a deploy during a
    long job would otherwise give one CSV of two models' answers (and, with renamed classes,
    rows that name classes the report does not know)."""
    def name(model: dict | None) -> str:
        return "an unrecorded model" if not model else f"model {model['sha256'][:12]}"

    current = model_of(bundle)
    found: dict[str, int] = {}
    for part in parts:
        found[name(part.get("model"))] = found.get(name(part.get("model")), 0) + 1
    if len(found) > 1:
        raise ValueError(f"the parts under {where} were scored by different models ("
                         + ", ".join(f"{n} by {m}" for m, n in sorted(found.items()))
                         + "): the bundle changed during the job; run the job again under a "
                         f"new name (the function now has {name(current)})")
    if any(part.get("model") != current for part in parts):
        raise ValueError(f"the parts under {where} were scored by {name(parts[0].get('model'))}"
                         f" but the function now has {name(current)} (or its classes differ): "
                         "run the job again under a new name")


def in_key_order(parts: list[dict]) -> list[dict]:
    """Parts sorted by their first key, checked not to overlap, so that their rows, concatenated,
    are in key order (Distributed Map batches are consecutive runs of the listing). Parts that
    listed nothing under the source come last: they add counts, not rows."""
    keyed = sorted((p for p in parts if p["first_key"] is not None), key=lambda p: p["first_key"])
    for before, after in zip(keyed, keyed[1:], strict=False):
        if after["first_key"] <= before["last_key"]:
            raise ValueError(f"parts {before['part']} and {after['part']} overlap "
                             f"({after['first_key']!r} <= {before['last_key']!r}): their rows "
                             "cannot be merged in key order")
    return keyed + [p for p in parts if p["first_key"] is None]


def write_csv(bucket: str, parts: list[dict], out: str, labels: list[str],
              any_label: bool, fields: bool = False) -> None:
    """The parts' rows under the header the CLI would write for them (a label column only if
    some row has a label; number fields end with the digits column), streamed into one object
    by a multipart upload."""
    upload = S3Upload(out)
    try:
        header = io.StringIO(newline="")
        csv.writer(header).writerow(csv_header(labels, any_label, False, fields=fields))
        upload.write(header.getvalue().encode("utf-8"))
        for body in fetch_in_order(bucket, [part["csv"] for part in parts],
                                   [part["csv_bytes"] for part in parts]):
            rows = body_rows(body) if any_label else rows_without_label(body)
            for piece in rows:
                upload.write(piece)
        upload.finish()
    except BaseException:
        upload.abort()
        raise


WRITE_PIECE = 2**20  # a part's rows go to the upload in pieces: no copy of a whole part


def body_rows(body: bytes) -> Iterator[memoryview]:
    """A part's CSV rows, after its own header line, in pieces."""
    rows = memoryview(body)[body.index(b"\n") + 1:]
    return (rows[i:i + WRITE_PIECE] for i in range(0, len(rows), WRITE_PIECE))


def rows_without_label(body: bytes) -> Iterator[bytes]:
    """A part's CSV rows, after its header, without the label column, in pieces."""
    source = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", newline="")
    source.readline()  # the part's own header
    piece = io.StringIO(newline="")
    writer = csv.writer(piece)
    for fields in csv.reader(source):
        writer.writerow(fields[:LABEL_COLUMN] + fields[LABEL_COLUMN + 1:])
        if piece.tell() >= WRITE_PIECE:
            yield piece.getvalue().encode("utf-8")
            piece.seek(0)
            piece.truncate()
    yield piece.getvalue().encode("utf-8")


def merged_report_files(bucket: str, parts: list[dict], bundle: Bundle, source: str,
                        config: Config, tally: Tally) -> dict[str, bytes]:
    """The report a prefix job would write (the digit or the number report, as `tally.fields`
    says), from the parts' labelled values (in row order), with the same code (`build_report`)."""
    y_true, y_pred, confidence = _unpack_labelled(parts, tally.fields)
    for part in parts:  # held once, concatenated
        del part["y_true"], part["y_pred"], part["confidence"]
    misclassified, least_confident = shown_examples(bucket, parts, np.asarray(y_true),
                                                    np.asarray(y_pred), confidence)
    tally.y_true, tally.y_pred, tally.confidence = y_true, y_pred, confidence
    return build_report(tally, bundle, misclassified, least_confident,
                        run_summary(tally, bundle, run_info(source, config),
                                    config.min_confidence, timings=False))


def shown_examples(bucket: str, parts: list[dict], y_true: np.ndarray, y_pred: np.ndarray,
                   confidence: np.ndarray) -> tuple[list, list]:
    """The thumbnails `report.ExampleCollector` would choose over all labelled rows in order:
    the most confident errors and the least confident predictions, ties to the earlier row.
    A row chosen over the whole job is among its own part's choices, so each part kept its
    candidates' images and only the parts holding a chosen row are read."""
    misclassified, least = report.choose_examples(y_true, y_pred, confidence)
    starts = np.cumsum([0] + [part["labelled"] for part in parts])
    chosen = sorted({int(i) for i in misclassified} | {int(i) for i in least})
    wanted: dict[int, list[int]] = {}
    for i in chosen:
        wanted.setdefault(int(np.searchsorted(starts, i, side="right")) - 1, []).append(i)
    examples = {}
    for number, rows in wanted.items():
        doc = get_json(bucket, parts[number]["examples"]) or {"examples": []}
        kept = {entry["index"]: entry for entry in doc["examples"]}
        for i in rows:
            examples[i] = _example(kept[i - int(starts[number])])
    return ([examples[int(i)] for i in misclassified], [examples[int(i)] for i in least])
