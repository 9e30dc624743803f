"""The automatic evaluation cadence and the trainer's BLAS thread choice (no timings asserted)."""

from __future__ import annotations

import time

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from charrnn.cadence import MIN_EVAL_ROUNDS, iterations_between_rounds, sure_round_due
from charrnn.errors import ConfigError
from charrnn.model import ModelConfig
from charrnn.train import Callback, TrainConfig, blas_threads
from conftest import Recorder, small_trainer

pytestmark = pytest.mark.fast  # the engine and config tests: pytest -m fast -n 2


def train_numbers(recorder):
    return [
        (s, {k: v for k, v in m.items() if k.startswith(("train/", "grad/"))})
        for s, m in recorder.metrics
        if any(k.startswith("train/") for k in m)
    ]


def test_automatic_cadence_evaluates_at_sure_and_logging_steps_and_leaves_training_unchanged():
    fixed, auto = Recorder(), Recorder()
    small_trainer("lstm", max_iters=40, eval_every=10, sample_every=10).run([fixed])
    small_trainer("lstm", max_iters=40, eval_every=None, sample_every=None).run([auto])
    assert train_numbers(auto) == train_numbers(fixed)
    val_steps = [s for s, m in auto.metrics if "val/loss" in m]
    assert set(range(4, 41, 4)) <= set(val_steps), "a round every 40 // MIN_EVAL_ROUNDS iterations, sure"
    assert all(s % 4 == 0 or s % 5 == 0 for s in val_steps), "the budget's rounds come at logging steps"
    assert val_steps[-1] == 40, "the final model is measured when the budget ends"
    before_end = [s for s, _ in auto.samples if s < 40]
    assert before_end == [s for s in val_steps if s < 40], "samples come with each periodic evaluation"
    shares = [m for _, m in auto.metrics if "throughput/train_fraction" in m]
    assert len(shares) == 8
    assert all(
        0 < m["throughput/train_fraction"]
        and m["throughput/eval_fraction"] >= 0
        and m["throughput/train_fraction"] + m["throughput/eval_fraction"] <= 1
        for m in shares
    )
    assert auto.result.train_seconds <= auto.result.elapsed_seconds


@pytest.mark.parametrize(
    "train_seconds,last_round,due",
    [
        (10.0, 0.0, True),  # nothing spent outside training yet
        (9.6, 0.1, True),  # 0.4 + 0.1 <= 0.05 * 10.1
        (9.6, 0.2, False),  # 0.4 + 0.2 >  0.05 * 10.2
        (9.0, 0.0, False),  # already 10% outside training
    ],
)
def test_a_round_is_due_only_while_the_time_outside_training_stays_within_the_fraction(train_seconds, last_round, due):
    trainer = small_trainer(eval_every=None, eval_max_fraction=0.05, log_every=5)
    trainer.train_seconds = train_seconds
    # the last round ended just now: no sure round is due, the budget alone decides
    assert trainer._evaluation_due(10, 10.0, last_round, 10.0) is due
    assert trainer._evaluation_due(11, 10.0, last_round, 10.0) is False, "only at logging steps"


@pytest.mark.parametrize(
    "max_iters,log_every,spacing",
    [
        (5000, 100, 500),  # the grid preset: 10 rounds at logging steps
        (1500, 100, 100),  # 150 rounded down to a logging step: 15 rounds
        (200, 100, 20),  # shorter than MIN_EVAL_ROUNDS logging steps: between them
        (40, 5, 4),
        (5, 100, 1),
        (None, 100, None),  # no iteration limit: spaced by time, or by the budget alone
    ],
)
def test_a_run_of_known_length_has_at_least_min_eval_rounds(max_iters, log_every, spacing):
    assert iterations_between_rounds(max_iters, log_every) == spacing
    if spacing is not None and max_iters >= MIN_EVAL_ROUNDS:
        assert max_iters // spacing >= MIN_EVAL_ROUNDS


def test_a_time_limited_run_has_a_round_every_tenth_of_its_budget():
    assert not sure_round_due(7, 11.9, 0.0, None, 120.0, 100)
    assert sure_round_due(7, 12.0, 0.0, None, 120.0, 100), "120 s / MIN_EVAL_ROUNDS into the run"
    assert sure_round_due(7, 24.1, 15.0, None, 120.0, 100), "at 24 s of run time, not 12 s after the last round"
    assert not sure_round_due(7, 23.9, 12.5, None, 120.0, 100), "the 12 s round is done, 24 s not yet reached"
    assert not sure_round_due(7, 24.5, 24.2, None, 120.0, 100), "one round per tenth"
    assert not sure_round_due(7, 1e6, 0.0, None, None, 100), "no length known: the budget alone decides"


def test_a_time_limited_run_with_slow_evaluations_still_gets_min_eval_rounds():
    """The sure rounds of a max_seconds run come at every tenth of its run time, counted from its start: an
    evaluation that takes a third of that spacing no longer pushes each later round back (it left 8 rounds)."""
    run = Recorder()
    trainer = small_trainer(
        max_iters=None, max_seconds=3.0, log_every=10, eval_every=None, sample_every=0, eval_max_fraction=1e-9
    )  # no budget rounds: the sure ones alone
    evaluate = trainer.evaluate

    def slow_evaluate():
        time.sleep(0.1)  # 0.1 s of a 0.3 s spacing
        return evaluate()

    trainer.evaluate = slow_evaluate
    trainer.run([run])
    val_steps = [s for s, m in run.metrics if "val/loss" in m]
    assert len(val_steps) >= MIN_EVAL_ROUNDS, f"{len(val_steps)} rounds in {run.result.elapsed_seconds:.2f} s"


def test_the_sure_rounds_happen_when_the_budget_allows_none():
    run = Recorder()
    small_trainer(max_iters=200, log_every=100, eval_every=None, eval_max_fraction=1e-9).run([run])
    val_steps = [s for s, m in run.metrics if "val/loss" in m]
    assert set(range(20, 201, 20)) <= set(val_steps) and len(val_steps) >= MIN_EVAL_ROUNDS


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, float("nan")])
def test_eval_max_fraction_outside_zero_one_is_rejected(fraction):
    with pytest.raises(ConfigError, match="^eval_max_fraction must be (positive|in \\[0, 1\\)|a finite number), got"):
        TrainConfig(eval_max_fraction=fraction)


def test_small_models_train_on_one_blas_thread_and_the_limit_is_restored():
    assert blas_threads(ModelConfig("rnn", 65, 100), batch_size=1) == 1
    assert blas_threads(ModelConfig("lstm", 65, 512), batch_size=32) is None

    def blas_counts():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    class Seen(Callback):
        def on_train_start(self, trainer):
            self.inside = blas_counts()

    seen = Seen()
    with threadpool_limits(2, user_api="blas"):  # the test suite itself runs with one BLAS thread
        small_trainer(max_iters=2).run([seen])
        after = blas_counts()
    assert seen.inside and set(seen.inside) == {1}
    assert after and set(after) == {2}
