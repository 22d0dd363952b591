"""Deliver a stop signal at chosen steps of the scorer's calls into its pools.

    python tests/stop_injection.py BUNDLE SOURCE WORKERS TRIALS SEED

A real signal lands wherever the main thread happens to be, and the moments that matter (a lock
taken, the code that releases it not yet entered) last a few bytecodes: a test that sends real
signals finds them about once in a hundred runs. This script calls the installed SIGTERM
handler itself, from a trace function, at the n-th line or return in concurrent.futures' and
threading's code run by the main thread, for TRIALS values of n spread over a whole run.

SOURCE is a folder (the process pool of WORKERS processes) or an s3:// prefix (also the thread
pool that fetches its objects). Each stopped run must raise Terminated and leave no pool thread
running: a lock left taken keeps the process pool's manager thread waiting for ever, and the
interpreter's exit with it; the thread pool's shutdown would hang this script. Prints one line
per trial and exits 0; on the first failure prints it and exits 1 at once (os._exit: a normal
exit would join the stuck thread and hang).
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import sys
import threading

from scorer.bundle import load_bundle
from scorer.pipeline import score
from scorer.sources import SourceStats, iter_inputs
from scorer.stopping import Terminated, install_stop_handlers

POOL_CODE = (os.path.dirname(concurrent.futures.__file__), threading.__file__)


def run(bundle, source: str, workers: int, stop_at: int | None) -> tuple[str, int]:
    """Score the source; call the SIGTERM handler at the stop_at-th event in pool code (None:
    never). Returns how the run ended and how many events it traced."""
    events = 0

    def in_pool_code(frame, event, _arg):
        nonlocal events
        if event in ("line", "return"):
            events += 1
            if events == stop_at:
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, frame)
        return in_pool_code

    def on_call(frame, _event, _arg):
        return in_pool_code if frame.f_code.co_filename.startswith(POOL_CODE) else None

    inputs = iter_inputs([source], SourceStats())
    sys.settrace(on_call)
    try:
        for _ in score(inputs, bundle, workers=workers, batch_size=64):
            pass
        ended = "finished"
    except Terminated:
        ended = "terminated"
    finally:
        sys.settrace(None)
    return ended, events


def main() -> None:
    bundle_dir, source = sys.argv[1], sys.argv[2]
    workers, trials, seed = (int(arg) for arg in sys.argv[3:6])
    install_stop_handlers()
    bundle = load_bundle(bundle_dir, "int8")
    ended, total = run(bundle, source, workers, None)
    print(f"unstopped: {ended}, {total} events in pool code", flush=True)
    rng = random.Random(seed)
    for trial in range(trials):
        stop_at = rng.randint(1, total)
        ended, events = run(bundle, source, workers, stop_at)
        if ended == "finished" and events < stop_at:  # this run made fewer calls: not stopped
            ended = "terminated"
        stuck = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and t.is_alive()]
        print(f"trial {trial}: stopped at event {stop_at}: {ended}"
              f"{f', threads still running: {stuck}' if stuck else ''}", flush=True)
        if ended != "terminated" or stuck:
            os._exit(1)


if __name__ == "__main__":
    main()
