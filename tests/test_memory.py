"""Memory does not grow with the number of iterations: training, evaluation, sampling and checkpoints reuse or
free what each iteration allocates (tracemalloc sees NumPy's buffers)."""
from __future__ import annotations

import gc
import tracemalloc

import pytest

from conftest import small_trainer

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
