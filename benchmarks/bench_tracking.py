"""Wall-time cost of MLflow tracking at the default cadence (target: at most 3%), per store.

Trains the main job's model (the gist's settings) on `pystdlib` for a fixed number of iterations,
untracked, tracked into the embedded SQLite store and tracked into the team server (`mlflow server` on
PostgreSQL, started here in a temporary folder, or the one given with --server), alternating so that
drift hits all alike, and prints the overhead two ways: the wall-time difference (noisy on a shared
machine) and the time spent inside the tracker's own calls, measured in three parts: opening the run,
the per-step calls (queueing; a background thread sends) and ending it (which waits for the sender's
last delivery). The projection onto the main job's 120-second budget scales the per-step part to the
iterations the job makes in that time and adds the two fixed parts once.
Run: .venv/bin/python benchmarks/bench_tracking.py [--iters 20000] [--repeats 3] [--server URL | --no-server]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from charrnn.allocator import keep_freed_memory
from charrnn.corpora import load_corpus
from charrnn.data import Vocab, split_corpus
from charrnn.model import ModelConfig
from charrnn.train import OptimConfig, TrainConfig, Trainer
from charrnn_experiments.store import Store, use_http_defaults
from charrnn_experiments.team_server import ServerError, TeamServer, free_port
from charrnn_experiments.tracking import MlflowTracker


class TimedTracker(MlflowTracker):
    """The tracker, adding up the seconds its per-step calls take (queueing: a background thread sends)."""

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


@dataclass
class Timing:
    """One training run: its wall time and, when tracked, the tracker's share of it in three parts."""

    wall: float
    start: float = 0.0  # opening the run (a fixed cost per run)
    steps: float = 0.0  # inside the per-step calls (grows with the iterations)
    finish: float = 0.0  # ending the run: waits for the sender's last delivery (a fixed cost per run)

    def main_job(self, iters: int, untracked: float) -> float:
        """The tracker's share of the main job's budget: the per-step cost scaled to the iterations the
        untracked run makes in MAIN_JOB_S, plus the fixed costs of opening and ending one run."""
        steps = self.steps / iters * (iters / untracked * MAIN_JOB_S)
        return (self.start + steps + self.finish) / MAIN_JOB_S


def timed_run(text: tuple[str, str], vocab: Vocab, iters: int, store: Store | None) -> Timing:
    """One training run of ``iters`` iterations, tracked into ``store`` or not."""
    train_text, val_text = text
    trainer = Trainer(
        ModelConfig("rnn", vocab.size),
        TrainConfig(max_iters=iters),
        OptimConfig(),
        vocab,
        train_text,
        val_text,
        checkpoint_dir=Path(tempfile.mkdtemp()),
    )
    if store is None:
        t0 = time.perf_counter()
        trainer.run([])
        return Timing(time.perf_counter() - t0)
    t0 = time.perf_counter()
    tracker = TimedTracker.start(store, store.ensure_experiment("bench"))
    tracker.outbox.folder = Path(tempfile.mkdtemp())
    t1 = time.perf_counter()
    result = trainer.run([tracker])
    t2 = time.perf_counter()
    tracker.finish("FINISHED", result.reason)
    t3 = time.perf_counter()
    return Timing(t3 - t0, start=t1 - t0, steps=tracker.seconds, finish=t3 - t2)


MAIN_JOB_S = 120.0  # the default train.max_seconds


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
    keep_freed_memory()  # as charrnn-train does, so the untracked runs compare with its tracked ones
    use_http_defaults()
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
        plain, tracked = [], {name: [] for name in stores}
        for _ in range(args.repeats):
            plain.append(timed_run(text, vocab, args.iters, None).wall)
            for name, store in stores.items():
                tracked[name].append(timed_run(text, vocab, args.iters, store))
    base = statistics.median(plain)
    print(f"iterations per run:     {args.iters} (log/eval/sample every 100/1000/1000, defaults)")
    print(f"untracked (median):     {base:.2f} s  {sorted(round(x, 2) for x in plain)}")
    for name, timings in tracked.items():
        wall = statistics.median(t.wall for t in timings)
        median = {part: statistics.median(getattr(t, part) for t in timings) for part in ("start", "steps", "finish")}
        main_job = statistics.median(t.main_job(args.iters, base) for t in timings)
        print(f"{name}:")
        print(f"  tracked (median):     {wall:.2f} s  {sorted(round(t.wall, 2) for t in timings)}")
        print(f"  wall-time overhead:   {(wall - base) / base:+.1%}")
        print(
            f"  inside the tracker:   start {median['start']:.3f} s + steps {median['steps']:.3f} s "
            f"+ finish {median['finish']:.3f} s per run (medians)"
        )
        print(
            f"  projected, main job:  {main_job:.1%} of its {MAIN_JOB_S:.0f} s  (target <= 3%): "
            "start + finish + the steps' cost scaled to its iterations"
        )


if __name__ == "__main__":
    main()
