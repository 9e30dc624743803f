"""Learning-rate schedules, decoupled weight decay and early stopping, in the engine (dropout: test_engine)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charrnn.checkpoint import load_checkpoint
from charrnn.errors import ConfigError
from charrnn.schedule import ScheduleConfig, learning_rate
from charrnn.train import OptimConfig, StopReason, TrainConfig, Trainer
from conftest import TEXT, Recorder, small_trainer

pytestmark = pytest.mark.fast  # engine tests: pytest -m fast -n 2


# ------------------------------------------------------------------------------------------------ schedules
def lrs(schedule, updates, base_lr=1.0):
    return [learning_rate(schedule, base_lr, done) for done in range(updates)]


def test_constant_is_the_base_lr_itself():
    assert lrs(ScheduleConfig(), 3, 0.002) == [0.002] * 3


def test_step_decay_multiplies_at_the_start_update_and_every_step_every_updates_after():
    # char-rnn: decays begin once step_start updates are done, then one per step_every updates
    schedule = ScheduleConfig("step", step_start=3, step_every=2, step_factor=0.5)
    assert lrs(schedule, 8) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_cosine_warms_up_linearly_then_follows_half_a_cosine_to_the_floor():
    schedule = ScheduleConfig("cosine", warmup_iters=4, decay_iters=12, min_lr_fraction=0.1)
    got = lrs(schedule, 16)
    assert got[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert got[8] == pytest.approx(0.55, abs=1e-15)  # half way: the mean of 1 and the floor
    assert got[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)), abs=1e-15)
    assert got[12:] == [pytest.approx(0.1, abs=1e-15)] * 4
    assert all(a > b for a, b in zip(got[4:12], got[5:13]))


def test_warmup_applies_to_every_schedule():
    assert lrs(ScheduleConfig("constant", warmup_iters=2), 3) == [0.5, 1.0, 1.0]
    assert lrs(ScheduleConfig("step", warmup_iters=2, step_start=2, step_every=10, step_factor=0.1), 3) == [
        0.5,
        1.0,
        pytest.approx(0.1),
    ]


def test_cosine_decays_to_max_iters_unless_told_and_the_run_keeps_that_horizon(tmp_path):
    trainer = small_trainer(
        optim="adam", optim_extra={"schedule": {"name": "cosine"}}, max_iters=30, checkpoint_dir=tmp_path
    )
    assert trainer.optim_config.schedule.decay_iters == 30
    trainer.run()
    assert load_checkpoint(tmp_path / "latest.npz").optim_config["schedule"]["decay_iters"] == 30


def test_the_trainer_updates_with_the_scheduled_lr_and_logs_it():
    schedule = {"name": "step", "step_start": 2, "step_every": 1, "step_factor": 0.5}
    scheduled = small_trainer(optim="adam", optim_extra={"schedule": schedule}, log_every=1)
    constant = small_trainer(optim="adam", log_every=1)
    for update in range(1, 4):
        scheduled.train_step()
        constant.train_step()
        scheduled.iteration += 1
        constant.iteration += 1
        same = all(np.array_equal(scheduled.params[k], constant.params[k]) for k in constant.params)
        assert same == (update <= 2), update  # the third update is the first at a lower lr
    rec = Recorder()
    small_trainer(optim="adam", optim_extra={"schedule": schedule}, log_every=1, max_iters=5).run([rec])
    logged = [m["optim/lr"] for _, m in rec.metrics if "optim/lr" in m]
    assert logged == [0.01, 0.01, 0.005, 0.0025, 0.00125]


@pytest.mark.parametrize(
    "schedule, train, match",
    [
        ({"name": "linear"}, {}, "schedule.name must be one of constant, step, cosine, got 'linear'"),
        ({"warmup_iters": -1}, {}, "schedule.warmup_iters must be an integer >= 0, got -1"),
        ({"step_every": 0}, {}, "schedule.step_every must be a positive integer, got 0"),
        ({"step_factor": 1.0}, {}, r"schedule.step_factor must be in \[0, 1\), got 1.0"),
        ({"step_factor": float("nan")}, {}, "schedule.step_factor must be a finite number, got nan"),
        ({"min_lr_fraction": -0.5}, {}, r"schedule.min_lr_fraction must be in \[0, 1\)"),
        ({"name": "cosine", "warmup_iters": 10, "decay_iters": 10}, {}, "warmup_iters must be below"),
        ({"warmup_iters": 50}, {"max_iters": 40}, "schedule.warmup_iters must be at most max_iters=40"),
        ({"name": "cosine"}, {"max_iters": None, "max_seconds": 5.0}, "schedule.decay_iters must be set"),
        ({"name": "cosine", "warmup_iters": 40}, {"max_iters": 40}, "warmup_iters must be below max_iters=40"),
    ],
)
def test_bad_schedules_fail_with_one_line_naming_the_key(schedule, train, match):
    with pytest.raises(ConfigError, match=match) as err:
        small_trainer(optim="adam", optim_extra={"schedule": schedule}, **train)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------- weight decay
def test_weight_decay_shrinks_the_weights_only_and_stays_out_of_the_adam_moments():
    decayed = small_trainer("gru", 2, optim="adam", optim_extra={"weight_decay": 0.5})
    plain = small_trainer("gru", 2, optim="adam")
    rng = np.random.default_rng(0)
    for name, value in plain.params.items():
        if value.ndim == 1:  # biases start at 0 or 1, where a wrong decay of them could hide
            value[...] = decayed.params[name][...] = rng.normal(0.0, 0.5, value.shape)
    before = {k: v.copy() for k, v in plain.params.items()}
    lr = plain.optim_config.lr
    decayed.train_step()
    plain.train_step()
    for slot in ("m", "v"):
        np.testing.assert_array_equal(decayed.optimizer.state[slot], plain.optimizer.state[slot])
    for name, value in plain.params.items():
        if value.ndim == 1:  # bh, bhn, by: no decay
            np.testing.assert_array_equal(decayed.params[name], value, err_msg=name)
        else:  # Wxh, Whh, Why: shrunk by lr * wd of themselves, besides the same Adam step
            np.testing.assert_allclose(
                decayed.params[name] - value, -lr * 0.5 * before[name], rtol=1e-6, atol=1e-15, err_msg=name
            )
            assert not np.array_equal(decayed.params[name], value)


@pytest.mark.parametrize(
    "optim, weight_decay, match",
    [
        ("adam", -0.1, "weight_decay must be >= 0, got -0.1"),
        ("adam", float("inf"), "weight_decay must be a finite number, got inf"),
        ("adagrad", 0.1, "weight_decay is decoupled weight decay for adam"),
    ],
)
def test_bad_weight_decay_fails_with_one_line(optim, weight_decay, match):
    with pytest.raises(ConfigError, match=match):
        OptimConfig(optim, 0.01, weight_decay=weight_decay)


# ----------------------------------------------------------------------------------------- early stopping
def evaluations_to_stop(val_losses, patience):
    """How many evaluations a run with ``patience`` makes, worked out from the val/loss of each evaluation."""
    best, since = math.inf, 0
    for count, loss in enumerate(val_losses, 1):
        best, since = (loss, 0) if loss < best else (best, since + 1)
        if since >= patience:
            return count
    return None


# a large lr on a tiny text: the validation loss wanders, so there are stretches without improvement
WANDERING = dict(optim="adam", optim_extra={"lr": 0.05}, eval_every=2, log_every=2, max_iters=80)


def val_losses():
    full = Recorder()
    small_trainer(**WANDERING).run([full])
    return [m["val/loss"] for _, m in full.metrics if "val/loss" in m]


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path, patience):
    settings = WANDERING
    val = val_losses()
    evaluations = evaluations_to_stop(val, patience)
    assert evaluations is not None and evaluations < len(val)  # the stop must come before the budget's end

    early = Recorder()
    result = small_trainer(**settings, patience=patience, checkpoint_dir=tmp_path).run([early])
    assert result.iteration == 2 * evaluations and (result.status, result.stop) == ("finished", StopReason.PATIENCE)
    best = min(val[:evaluations])
    best_at = 2 * (val.index(best) + 1)
    assert result.best_val_loss == best
    assert result.reason == (
        f"stopped early: validation loss has not improved for patience={patience} "
        f"evaluations (best {best:.4f} at iteration {best_at}, kept in best.npz)"
    )
    assert load_checkpoint(result.best_checkpoint).iteration == best_at


def test_a_resumed_run_keeps_counting_evaluations_without_improvement(tmp_path):
    stop = 2 * evaluations_to_stop(val_losses(), 3)
    uninterrupted = small_trainer(**WANDERING, patience=3).run()
    # checkpointed one evaluation before the stop, with two evaluations without improvement already counted
    first = small_trainer(**{**WANDERING, "max_iters": stop - 2}, patience=3, checkpoint_dir=tmp_path)
    first.run()
    split = len(TEXT) * 9 // 10
    resumed = Trainer.from_checkpoint(
        tmp_path / "latest.npz",
        TEXT[:split],
        TEXT[split:],
        tmp_path,
        TrainConfig(**{**vars(first.train_config), "max_iters": 80}),
    ).run()
    assert resumed.iteration == uninterrupted.iteration == stop
    assert resumed.reason == uninterrupted.reason.replace(")", ", kept in best.npz)")


def test_patience_needs_a_validation_text_and_a_positive_count():
    with pytest.raises(ConfigError, match="patience must be a positive integer"):
        TrainConfig(patience=0)
    trainer = small_trainer(patience=2)
    with pytest.raises(ConfigError, match="^patience stops on the validation loss, but there is no validation"):
        type(trainer)(
            trainer.model_config, trainer.train_config, trainer.optim_config, trainer.vocab, "some training text"
        )


@pytest.mark.parametrize(
    "limit, stop",
    [
        ({"max_iters": 6}, StopReason.MAX_ITERS),
        ({"max_iters": None, "max_seconds": 1e-9}, StopReason.MAX_SECONDS),
        ({"target_val_loss": 100.0}, StopReason.TARGET_VAL_LOSS),
    ],
)
def test_each_limit_is_named_by_its_stop_reason(limit, stop):
    result = small_trainer(**{**WANDERING, **limit}).run()
    assert (result.stop, result.status) == (stop, "finished")
