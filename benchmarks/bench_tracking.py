"""Wall-time cost of MLflow tracking at the default cadence (target: at most 3%), per store.

Trains the main job's model (the gist's settings) on `pystdlib` for a fixed number of iterations,
untracked, tracked into the embedded SQLite store and tracked into the team server (`mlflow server` on
PostgreSQL, started here in a temporary folder, or the one given with --server), alternating so that
drift hits all alike, and prints the overhead two ways: the wall-time difference (noisy on a shared
machine) and the time spent inside the tracker's own calls (queueing; a background thread sends). Ending
a run waits for the sender's last delivery, a fixed cost also projected onto the main job's 120-second budget.
Run: .venv/bin/python benchmarks/bench_tracking.py [--iters 20000] [--repeats 3] [--server URL | --no-server]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from charrnn.data import Vocab, load_corpus, split_corpus
from charrnn.model import ModelConfig
from charrnn.train import OptimConfig, TrainConfig, Trainer
from charrnn_experiments.team_server import ServerError, TeamServer, free_port
from charrnn_experiments.tracking import MlflowTracker, Store


class TimedTracker(MlflowTracker):
    """The tracker, adding up the seconds its own calls take."""

    seconds = 0.0  # per instance once a call has been timed

    def _timed(name):
        def call(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return getattr(MlflowTracker, name)(self, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return call

    on_metrics, on_sample, on_checkpoint = _timed("on_metrics"), _timed("on_sample"), _timed("on_checkpoint")
    finish = _timed("finish")


def timed_run(text: tuple[str, str], vocab: Vocab, iters: int, store: Store | None) -> tuple[float, float]:
    """(seconds for one training run of ``iters`` iterations, seconds inside the tracker's calls),
    tracked into ``store`` or not."""
    train_text, val_text = text
    trainer = Trainer(ModelConfig("rnn", vocab.size), TrainConfig(max_iters=iters), OptimConfig(),
                      vocab, train_text, val_text, checkpoint_dir=Path(tempfile.mkdtemp()))
    t0 = time.perf_counter()
    callbacks = []
    if store is not None:
        tracker = TimedTracker.start(store, store.ensure_experiment("bench"))
        tracker.outbox = Path(tempfile.mkdtemp())
        callbacks = [tracker]
    result = trainer.run(callbacks)
    if callbacks:
        tracker.finish("FINISHED", result.reason)
    return time.perf_counter() - t0, tracker.seconds if callbacks else 0.0


MAIN_JOB_S = 120.0      # the default train.max_seconds
FINISH_FIXED_S = 1.0    # finish waits for the sender's last delivery (it wakes every two seconds at most)


@contextlib.contextmanager
def team_server(url: str | None, enabled: bool):
    """The server's URL: the one given, else one started in a temporary folder (None without PostgreSQL)."""
    if url or not enabled:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="charrnn-bench-"))
    folder.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must enter it
    server = TeamServer(folder, free_port(), workers=2)
    try:
        started = server.start()[0]
    except ServerError as err:
        print(f"no team server ({err}); SQLite only")
        started = None
    try:
        yield started
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", help="an MLflow tracking server's URL (default: start one on PostgreSQL)")
    parser.add_argument("--no-server", action="store_true", help="SQLite only")
    args = parser.parse_args()
    corpus = load_corpus("pystdlib")
    text = split_corpus(corpus, 0.1, 25)
    vocab = Vocab.from_text(corpus.text)
    with tempfile.TemporaryDirectory() as tmp, team_server(args.server, not args.no_server) as url:
        stores = {"sqlite": Store.resolve(None, tmp)}
        if url:
            stores["server"] = Store(url, None)
        for store in stores.values():
            # Create the store up front: its one-off schema migration is not a per-run cost.
            store.ensure_experiment("bench")
        plain, wall, inside = [], {name: [] for name in stores}, {name: [] for name in stores}
        for _ in range(args.repeats):
            plain.append(timed_run(text, vocab, args.iters, None)[0])
            for name, store in stores.items():
                seconds, in_tracker = timed_run(text, vocab, args.iters, store)
                wall[name].append(seconds)
                inside[name].append(in_tracker)
    base = statistics.median(plain)
    print(f"iterations per run:     {args.iters} (log/eval/sample every 100/1000/1000, defaults)")
    print(f"untracked (median):     {base:.2f} s  {sorted(round(x, 2) for x in plain)}")
    for name in stores:
        tracked, in_tracker = statistics.median(wall[name]), statistics.median(inside[name])
        per_iter = (in_tracker - FINISH_FIXED_S) / args.iters
        main_job = (FINISH_FIXED_S + per_iter * args.iters / base * MAIN_JOB_S) / MAIN_JOB_S
        print(f"{name}:")
        print(f"  tracked (median):     {tracked:.2f} s  {sorted(round(x, 2) for x in wall[name])}")
        print(f"  wall-time overhead:   {(tracked - base) / base:+.1%}")
        print(f"  inside the tracker:   {in_tracker:.2f} s per run = {in_tracker / base:.1%} of the untracked run")
        print(f"  projected, main job:  {main_job:.1%} of its {MAIN_JOB_S:.0f} s  (target <= 3%)")


if __name__ == "__main__":
    main()
