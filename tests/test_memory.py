"""Memory does not grow with the number of iterations: training, evaluation, sampling and checkpoints reuse or
free what each iteration allocates (tracemalloc sees NumPy's buffers); and a long text costs charrnn-train a few
bytes per character."""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc

import pytest

from conftest import BIN, small_trainer

N = 100
# Far below what one leaked (B,H) state per iteration would add over the 2N extra iterations (2N * 2*16*8 B =
# 51 KiB), let alone one step's cache or gradients (~250 KiB each); above the few KiB that a run() call's own
# bookkeeping leaves (measured 1-9 KiB).
BOUND = 32 * 1024


def step_and_evaluation_peak(trainer) -> int:
    """Peak traced bytes above the held ones during one training step and one evaluation, with the garbage
    collector off: a short window, so allocations by other threads of the test process hardly ever fall in it."""
    gc.collect()
    gc.disable()
    try:
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        trainer.train_step()
        trainer.evaluate()
        return tracemalloc.get_traced_memory()[1] - held
    finally:
        gc.enable()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_memory_after_3n_iterations_is_that_after_n(cell, tmp_path):
    trainer = small_trainer(cell, 2, max_iters=N, eval_every=25, sample_every=25, checkpoint_dir=tmp_path)
    gc.collect()
    tracemalloc.start()
    try:
        trainer.run()
        gc.collect()
        held_n = tracemalloc.get_traced_memory()[0]
        peak_n = step_and_evaluation_peak(trainer)
        trainer.train_config.max_iters = 3 * N
        trainer.run()
        gc.collect()
        held_3n = tracemalloc.get_traced_memory()[0]
        peak_3n = step_and_evaluation_peak(trainer)
    finally:
        tracemalloc.stop()
    assert trainer.iteration == 3 * N
    assert held_3n - held_n <= BOUND, f"held memory grew by {held_3n - held_n} B over {2 * N} iterations"
    assert peak_3n - peak_n <= BOUND, f"the peak of a step and an evaluation grew from {peak_n} B to {peak_3n} B"


def peak_rss_of(command: list[str], cwd) -> float:
    """The peak resident memory (bytes) of ``command``, run as the only child of a fresh interpreter: the
    test process's own children would share RUSAGE_CHILDREN's maximum."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stderr[-2000:])"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], cwd=cwd, capture_output=True, text=True, timeout=280)
    code, kib = out.stdout.split("\n", 1)[0].split()
    assert code == "0", out.stdout
    return int(kib) * 1024


def test_charrnn_train_on_a_long_text_costs_a_few_bytes_per_character(tmp_path):
    """The whole command, from reading the file to the end-of-run recording: a 24 MB text adds about 3 bytes
    per character to the peak RSS of the same run on a small text (a 50 MB text once peaked at 27)."""
    block = "".join(f"def f{i}(x):\n    return x * {i} + 'abc'  # note {i % 7}\n" for i in range(1000))
    (tmp_path / "small.txt").write_text(block, encoding="utf-8")
    (tmp_path / "long.txt").write_text(block * (24_000_000 // len(block)), encoding="utf-8")
    n_chars = (tmp_path / "long.txt").stat().st_size
    run = [
        str(BIN / "charrnn-train"),
        "data=file",
        "model.hidden_size=8",
        "train.max_iters=20",
        "train.max_seconds=null",
        "train.log_every=10",
    ]
    small = peak_rss_of([*run, f"data.path={tmp_path / 'small.txt'}"], tmp_path)
    long = peak_rss_of([*run, f"data.path={tmp_path / 'long.txt'}"], tmp_path)
    assert (long - small) / n_chars < 6, f"{(long - small) / n_chars:.1f} bytes per character"
