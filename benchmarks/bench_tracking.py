"""Wall-time cost of MLflow tracking at the default cadence (target: at most 3%).

Trains the main job's model (the gist's settings) on `pystdlib` for a fixed number of iterations,
untracked and tracked into a SQLite store, alternating so that drift hits both alike, and prints the
overhead two ways: the wall-time difference (noisy on a shared machine) and the time spent inside
the tracker's own calls (queueing; a background thread sends). Ending a run waits for the last
delivery, a fixed cost projected onto the main job's 120-second budget.
Run: .venv/bin/python benchmarks/bench_tracking.py [--iters 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from charrnn.data import Vocab, load_corpus, split_train_val
from charrnn.model import ModelConfig
from charrnn.train import OptimConfig, TrainConfig, Trainer
from charrnn_experiments.tracking import MlflowTracker, Store


class TimedTracker(MlflowTracker):
    """The tracker, adding up the seconds its own calls take."""

    seconds = 0.0

    def _timed(name):
        def call(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return getattr(MlflowTracker, name)(self, *args, **kwargs)
            finally:
                TimedTracker.seconds += time.perf_counter() - t0
        return call

    on_metrics, on_sample, on_checkpoint = _timed("on_metrics"), _timed("on_sample"), _timed("on_checkpoint")
    finish = _timed("finish")


def timed_run(text: tuple[str, str], vocab: Vocab, iters: int, tracked_in: Path | None) -> float:
    """Seconds for one training run of ``iters`` iterations, tracked into ``tracked_in`` or not."""
    train_text, val_text = text
    trainer = Trainer(ModelConfig("rnn", vocab.size), TrainConfig(max_iters=iters), OptimConfig(),
                      vocab, train_text, val_text, checkpoint_dir=Path(tempfile.mkdtemp()))
    t0 = time.perf_counter()
    callbacks = []
    if tracked_in is not None:
        store = Store.resolve(None, tracked_in)
        tracker = TimedTracker.start(store, store.ensure_experiment("bench"))
        tracker.outbox = Path(tempfile.mkdtemp())
        callbacks = [tracker]
    result = trainer.run(callbacks)
    if callbacks:
        tracker.finish("FINISHED", result.reason)
    return time.perf_counter() - t0


MAIN_JOB_S = 120.0      # the default train.max_seconds
FINISH_FIXED_S = 1.0    # finish waits for the sender's last delivery (it wakes every two seconds at most)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    corpus = load_corpus("pystdlib")
    text = split_train_val(corpus.text, 0.1, 25)
    vocab = Vocab.from_text(corpus.text)
    with tempfile.TemporaryDirectory() as tmp:
        # Create the store up front: its one-off schema migration is not a per-run cost.
        Store.resolve(None, tmp).ensure_experiment("bench")
        plain, tracked = [], []
        for _ in range(args.repeats):
            plain.append(timed_run(text, vocab, args.iters, None))
            tracked.append(timed_run(text, vocab, args.iters, Path(tmp)))
    base, with_tracking = statistics.median(plain), statistics.median(tracked)
    overhead = (with_tracking - base) / base
    inside = TimedTracker.seconds / args.repeats
    per_iter = (inside - FINISH_FIXED_S) / args.iters
    main_job = (FINISH_FIXED_S + per_iter * args.iters / base * MAIN_JOB_S) / MAIN_JOB_S
    print(f"iterations per run:     {args.iters} (log/eval/sample every 100/1000/1000, defaults)")
    print(f"untracked (median):     {base:.2f} s  {sorted(round(x, 2) for x in plain)}")
    print(f"tracked (median):       {with_tracking:.2f} s  {sorted(round(x, 2) for x in tracked)}")
    print(f"wall-time overhead:     {overhead:+.1%}")
    print(f"inside the tracker:     {inside:.2f} s per run = {inside / base:.1%} of the untracked run")
    print(f"projected, main job:    {main_job:.1%} of its {MAIN_JOB_S:.0f} s  (target <= 3%)")


if __name__ == "__main__":
    main()
