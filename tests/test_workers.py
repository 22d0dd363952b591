"""`digits-score`'s worker processes, in real subprocesses: a SIGTERM or SIGKILL of the run
stops them and leaves no file behind, their number is capped by what the machine allows, and a
worker killed mid-run (the OOM killer) loses no row."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from cli_helpers import ROOT, accuracy, read_csv, score_cli
from digit_factory import mnist_png
from moto_server import moto_endpoint  # noqa: F401

# --- stopped runs and the number of workers -----------------------------------------------------


@pytest.fixture(scope="module")
def many_pngs_zip(tmp_path_factory, mnist_test_images) -> Path:
    """200,000 PNGs in one zip: a run long enough to be stopped while its pool works."""
    data = mnist_png(mnist_test_images[0][0])
    archive = tmp_path_factory.mktemp("many") / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(200_000):
            zf.writestr(f"img{i:06d}.png", data)
    return archive


@pytest.mark.parametrize("stop, code, said", [
    ("SIGTERM to the process", 143, "terminated (SIGTERM): no output written"),
    ("Ctrl-C to the process group", 130, "interrupted (Ctrl-C): no output written")])
def test_a_stop_stops_workers_and_leaves_no_files(tmp_path, mnist_bundle, many_pngs_zip, stop,
                                                 code, said):
    """`kill PID` reaches the run alone; a terminal's Ctrl-C reaches its workers too. Either way
    the run stops its workers, removes its temporary CSV and says so in one line (a worker
    that took Ctrl-C for itself used to print a traceback, and the run exited 1)."""
    import psutil

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    command = [sys.executable, "-m", "scorer", str(many_pngs_zip), "--model", str(mnist_bundle),
               "--out", str(out_dir / "many.csv"), "--workers", "3"]  # 2 pool workers
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while len(parent.children()) < 2 and time.monotonic() < deadline:  # the pool is working
        time.sleep(0.05)
    workers = parent.children(recursive=True)
    assert len(workers) >= 2
    if stop.startswith("SIGTERM"):
        proc.terminate()
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert stderr.strip() == said  # no traceback, from the run or a worker
    assert list(out_dir.iterdir()) == []  # no half CSV, no temporary file
    psutil.wait_procs(workers, timeout=10)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_workers_are_capped_by_the_cores_and_the_open_file_limit(tmp_path, labelled_tree,
                                                                   mnist_bundle):
    """--workers 256 on 2 cores started 255 workers (now at most two a core); with `ulimit -n
    64`, --workers 64 ran out of file descriptors (a traceback, then a hang at exit). Both now
    run with what the machine allows, and say so."""
    import resource

    cores = len(os.sched_getaffinity(0))
    done = score_cli(labelled_tree, "--model", mnist_bundle, "--workers", "256",
                     "--out", tmp_path / "many.csv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"--workers 256: using {2 * cores}" in done.stderr

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    command = [sys.executable, "-m", "scorer", str(labelled_tree), "--model", str(mnist_bundle),
               "--workers", "64", "--out", str(tmp_path / "few.csv")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=low_limit)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "--workers 64: using 1" in done.stderr
    assert (tmp_path / "few.csv").read_text() == (tmp_path / "many.csv").read_text()


def test_workers_die_with_a_killed_run(tmp_path, mnist_bundle, mnist_test_images):
    """SIGKILL of digits-score (no cleanup code runs): its workers die with it instead of
    running on for tens of seconds (Linux's parent-death signal), and its temporary CSV,
    which has no name until it is complete, goes with it."""
    import psutil

    data = mnist_png(mnist_test_images[0][0])
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(200_000):
            zf.writestr(f"img{i:06d}.png", data)
    command = [sys.executable, "-m", "scorer", str(archive), "--model", str(mnist_bundle),
               "--out", str(tmp_path / "out.csv"), "--workers", "3"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while len(parent.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = parent.children(recursive=True)
    assert len(workers) >= 2
    proc.kill()
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not [w for w in alive if w.status() != psutil.STATUS_ZOMBIE]
    assert [path.name for path in tmp_path.iterdir()] == ["many.zip"]


def test_sigterm_to_the_process_group_never_hangs(tmp_path, mnist_bundle, mnist_test_images):
    """SIGTERM to the whole process group (as systemd and `timeout` send it) at random moments
    of a run with workers: the workers die with the signal, and waiting for their pool used to
    hang the run for good (about 1 run in 15 here). Each run must end by itself, promptly, with
    nothing left behind: no temporary CSV, no process."""
    import psutil

    folder = tmp_path / "images"
    folder.mkdir()
    data = mnist_png(mnist_test_images[0][0])
    for i in range(12_000):
        (folder / f"{i:05d}.png").write_bytes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    command = [sys.executable, "-m", "scorer", str(folder), "--model", str(mnist_bundle),
               "--out", str(out_dir / "out.csv"), "--workers", "3"]
    rng = random.Random(7)
    for _ in range(15):
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.6, 1.4))  # after the imports: the pool is starting or working
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("digits-score hung after SIGTERM to its process group")
        assert code in (0, 143, -signal.SIGTERM), code  # -15: before the handler was set
        assert not [p for p in out_dir.iterdir() if p.name != "out.csv"]  # no temporary file
        left = [pid for pid in family if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not left, left


def stop_at_every_step(bundle: Path, source: str, workers: int, trials: int) -> str:
    """Run tests/stop_injection.py: a stop signal at `trials` random steps of the pools' code."""
    command = [sys.executable, str(ROOT / "tests" / "stop_injection.py"), str(bundle), source,
               str(workers), str(trials), "7"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired as hung:  # its output arrives as bytes, text=True or not
        printed = hung.stdout.decode() if isinstance(hung.stdout, bytes) else hung.stdout or ""
        pytest.fail(f"a stopped run hung; last trials:\n{printed[-400:]}")
    assert done.returncode == 0, done.stdout[-600:] + done.stderr[-2000:]
    return done.stdout


def test_a_stop_signal_inside_a_pool_call_leaks_no_lock(tmp_path, mnist_bundle, mnist_test_images):
    """The hang above comes from a few bytecodes: SIGTERM's exception raised between a lock
    taken and the code that releases it, in concurrent.futures. A real signal finds them about
    once in a hundred runs, so the handler is called at 80 random steps of the pool's code: each
    run must stop, with no pool thread left (without the deferral, 1 to 13 trials hang it)."""
    x, _ = mnist_test_images
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3_000):
        (folder / f"{i:05d}.png").write_bytes(mnist_png(x[i % len(x)]))
    output = stop_at_every_step(mnist_bundle, str(folder), workers=3, trials=80)
    assert output.count(": terminated") == 80, output[-600:]


def test_a_stop_signal_inside_an_s3_fetch_leaks_no_lock(moto_endpoint, mnist_bundle,  # noqa: F811
                                                        mnist_test_images):
    """The same for the thread pool that fetches an s3:// prefix's objects (one process)."""
    import boto3

    x, _ = mnist_test_images
    bucket = f"stop-{uuid.uuid4().hex[:20]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for i in range(300):
        s3.put_object(Bucket=bucket, Key=f"in/{i:04d}.png", Body=mnist_png(x[i % len(x)]))
    output = stop_at_every_step(mnist_bundle, f"s3://{bucket}/in/", workers=1, trials=40)
    assert output.count(": terminated") == 40, output[-600:]


# --- a worker killed mid-run (the OOM killer) --------------------------------------------------


def worker_processes(process):
    """The CLI's pool workers: its forked children."""
    psutil = pytest.importorskip("psutil")
    with contextlib.suppress(psutil.Error):
        return psutil.Process(process.pid).children()
    return []


def test_a_killed_worker_loses_no_rows(tmp_path, mnist_bundle, mnist_test_images):
    """SIGKILL one worker while a large run is in flight: the pool restarts, the lost chunks run
    again, and the CSV has every row, in order."""
    x, y = mnist_test_images
    n = 30_000
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"{y[i % 1000]}/img{i:06d}.png", mnist_png(x[i % 1000]))
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "scorer", str(archive), "--model", str(mnist_bundle),
               "--out", str(out), "--workers", "2"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (workers := worker_processes(process)):
        assert process.poll() is None and time.monotonic() < deadline, "no workers started"
        time.sleep(0.01)
    time.sleep(0.5)  # well into the run, with windows in flight
    assert process.poll() is None, "the run ended before a worker could be killed"
    workers[0].kill()  # SIGKILL, as the OOM killer sends
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    _, rows = read_csv(out)
    assert [r["source"] for r in rows] == \
        sorted(f"{archive}!/{y[i % 1000]}/img{i:06d}.png" for i in range(n))  # member order
    assert all(r["status"] == "ok" for r in rows)
    assert accuracy(rows) >= 0.9


def test_an_input_that_kills_its_worker_twice_becomes_an_error_row(tmp_path, mnist_bundle,
                                                                   mnist_test_images):
    """An out-of-memory killer stand-in kills any worker whose memory grows by 80 MB: only the
    large image does that. It kills its chunk's worker, then its worker again when run alone,
    and becomes an error row; every other row is scored, in order."""
    from PIL import Image, ImageDraw

    psutil = pytest.importorskip("psutil")
    x, _ = mnist_test_images
    folder = tmp_path / "uploads"
    folder.mkdir()
    for i in range(200):
        (folder / f"a{i:03d}.png").write_bytes(mnist_png(x[i]))
    ring = Image.new("RGBA", (3400, 3400), (255, 255, 255, 0))
    ImageDraw.Draw(ring).ellipse((1000, 1000, 2400, 2400), outline=(0, 0, 0, 255), width=120)
    ring.save(folder / "a100-large.png")
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "scorer", str(folder), "--model", str(mnist_bundle),
               "--out", str(out), "--workers", "2", "--batch-size", "8"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first_seen: dict[int, int] = {}
    kills = 0
    while process.poll() is None:
        for worker in worker_processes(process):
            with contextlib.suppress(psutil.Error):
                rss = worker.memory_info().rss
                if rss > first_seen.setdefault(worker.pid, rss) + 80 * 2**20:
                    worker.kill()
                    kills += 1
        time.sleep(0.005)
    stderr = process.stderr.read()
    assert process.returncode == 3, stderr[-2000:]
    assert "Traceback" not in stderr
    _, rows = read_csv(out)
    names = sorted(p.name for p in folder.iterdir())
    assert [Path(r["source"]).name for r in rows] == names
    by_name = {Path(r["source"]).name: r for r in rows}
    assert by_name["a100-large.png"]["status"] == "error"
    assert by_name["a100-large.png"]["error"].startswith("worker died while decoding")
    assert all(r["status"] == "ok" for name, r in by_name.items() if name != "a100-large.png")
    assert kills == 2
