"""The NumPy engine: gradients, gist parity, batching, loss stability, checkpoints and exact resume."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest

from charrnn import cells, model
from charrnn.checkpoint import load_checkpoint, load_initial_weights, load_model, save_checkpoint
from charrnn.corpora import load_corpus
from charrnn.data import BatchStream, Vocab, split_train_val
from charrnn.errors import CheckpointError, ConfigError, DataError
from charrnn.gradcheck import check_gradients
from charrnn.model import (
    ModelConfig,
    dropout_masks,
    forward,
    init_params,
    init_state,
    loss_and_grads,
    param_shapes,
    softmax_cross_entropy,
)
from charrnn.optim import clip_gradients, make_optimizer
from charrnn.reference import GistRNN
from charrnn.sample import sample
from charrnn.train import Callback, OptimConfig, StopReason, TrainConfig, Trainer, evaluate_streams
from conftest import PARITY_TEXT, SHAKESPEARE, TEXT, Recorder, compose_cfg, small_trainer, write_small_text

pytestmark = pytest.mark.fast  # the engine and config tests: pytest -m fast -n 2


def numbers(recorder):
    """Everything a run reports except wall-clock throughput, which no two runs share."""
    return [(s, {k: v for k, v in m.items() if not k.startswith("throughput")}) for s, m in recorder.metrics]


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_gradients_match_numerical(cell, layers):
    errors = check_gradients(cell, num_layers=layers, batch_size=3, seq_length=4)
    assert set(errors) == set(param_shapes(ModelConfig(cell, 6, 4, layers)))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, f"{worst}: {errors[worst]:.2e}"


@pytest.mark.parametrize("steps_per_block", [1, 2, 3])
def test_lstm_gradients_match_numerical_when_its_backward_works_in_blocks_of_steps(monkeypatch, steps_per_block):
    """At large B*H the LSTM backward takes its local derivatives a few steps at a time; here with B=3, H=4
    (48 gate elements per step) and T=5, so the last block is partial for 2 and 3 steps per block."""
    monkeypatch.setattr(cells, "LOCAL_DERIVATIVE_BLOCK", 48 * steps_per_block)
    errors = check_gradients("lstm", num_layers=2, batch_size=3, seq_length=5)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, f"{worst}: {errors[worst]:.2e}"


def test_gradient_check_catches_a_broken_backward(monkeypatch):
    # a tanh derivative that is off by a factor must be seen, or the check proves nothing
    monkeypatch.setattr(cells, "rnn_step_backward", lambda dh, dtanh_t, out: np.multiply(dh, dtanh_t * 1.01, out=out))
    errors = check_gradients("rnn")
    assert errors["Whh"] > 1e-4 and errors["Wxh"] > 1e-4


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_gradients_match_numerical_with_dropout_masks_held_fixed(cell, layers):
    errors = check_gradients(cell, num_layers=layers, batch_size=3, seq_length=4, dropout=0.4)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, f"{worst}: {errors[worst]:.2e}"


def test_gradient_check_catches_a_dropout_mask_missing_from_backward(monkeypatch):
    monkeypatch.setattr(model, "dropout_backward", lambda dout, mask: dout)
    errors = check_gradients("lstm", num_layers=2, batch_size=3, seq_length=4, dropout=0.4)
    assert errors["Wxh"] > 1e-3 and errors["Wxh.1"] > 1e-3


def test_dropout_masks_are_inverted_and_drawn_only_when_asked():
    config = ModelConfig("gru", 5, 8, 2, "float32", dropout=0.25)
    masks = dropout_masks(np.random.default_rng(0), config, 50, 4)
    assert len(masks) == 2 and all(m.shape == (50, 4, 8) and m.dtype == np.float32 for m in masks)
    assert set(np.unique(np.concatenate(masks))) == {0.0, np.float32(1 / 0.75)}
    assert 0.2 < np.mean(np.concatenate(masks) == 0) < 0.3
    rng = np.random.default_rng(0)
    assert dropout_masks(rng, ModelConfig("gru", 5, 8, 2), 50, 4) is None
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state


def test_dropout_changes_training_but_not_evaluation_sampling_or_the_other_random_streams():
    dropped, whole = small_trainer("lstm", 2, dropout=0.5), small_trainer("lstm", 2)
    for name in whole.params:  # the same weights, whatever ModelConfig says
        np.testing.assert_array_equal(dropped.params[name], whole.params[name])
    assert dropped.evaluate() == whole.evaluate()
    assert dropped.sample(40) == whole.sample(40)
    assert dropped.train_step()[0] != whole.train_step()[0]
    assert dropped.stream.state() == whole.stream.state()
    assert dropped.sample_rng.bit_generator.state == whole.sample_rng.bit_generator.state


def test_batch_gradient_is_the_mean_of_the_streams():
    cfg = ModelConfig("lstm", 7, 5, 2)
    rng = np.random.default_rng(1)
    params = init_params(cfg, rng)
    inputs, targets = rng.integers(0, 7, (6, 3)), rng.integers(0, 7, (6, 3))
    loss, grads, _ = loss_and_grads(params, cfg, inputs, targets, init_state(cfg, 3))
    per_stream = [loss_and_grads(params, cfg, inputs[:, [b]], targets[:, [b]], init_state(cfg, 1)) for b in range(3)]
    assert loss == pytest.approx(np.mean([s[0] for s in per_stream]), rel=1e-12)
    for name in params:
        np.testing.assert_allclose(
            grads[name], np.mean([s[1][name] for s in per_stream], axis=0), rtol=1e-10, atol=1e-14
        )


def test_loss_is_finite_at_huge_logits():
    logits = np.array([[[1e4, -1e4, 0.0], [800.0, 799.0, -800.0]]])  # (T=1, B=2, V=3)
    loss, dlogits = softmax_cross_entropy(logits, np.array([[1, 1]]))
    assert math.isfinite(loss) and np.isfinite(dlogits).all()
    assert loss == pytest.approx((2e4 + (1.0 + math.log1p(math.exp(-1.0)))) / 2)


def test_float32_stays_float32():
    cfg = ModelConfig("gru", 5, 4, 2, "float32")
    params = init_params(cfg, np.random.default_rng(0))
    inputs = np.zeros((3, 2), dtype=np.int64)
    loss, grads, state = loss_and_grads(params, cfg, inputs, inputs, init_state(cfg, 2))
    assert all(g.dtype == np.float32 for g in grads.values())
    assert state[0][0].dtype == np.float32 and math.isfinite(loss)


@pytest.mark.parametrize(
    "cell,names", [("rnn", {"h"}), ("lstm", {"h", "c", "i", "f", "o", "g"}), ("gru", {"h", "r", "z", "n"})]
)
def test_forward_returns_internals_per_layer(cell, names):
    cfg = ModelConfig(cell, 5, 4, 2)
    params = init_params(cfg, np.random.default_rng(0))
    inputs = np.random.default_rng(1).integers(0, 5, (7, 3))
    logits, _, state, internals = forward(params, cfg, inputs, init_state(cfg, 3), return_internals=True)
    assert set(internals) == names
    assert all(len(v) == 2 and all(a.shape == (7, 3, 4) for a in v) for v in internals.values())
    np.testing.assert_array_equal(internals["h"][1][-1], state[1][0])
    for gate in names & {"i", "f", "o", "r", "z"}:
        assert all(((a > 0) & (a < 1)).all() for a in internals[gate])


def test_an_lstm_starts_with_its_forget_gates_open_and_its_other_gates_unbiased():
    """Forget gate bias 1 (Jozefowicz et al. 2015): with the weights zeroed, only the biases speak, so every
    step's f is sigmoid(1) and i, o are sigmoid(0), in both layers."""
    cfg = ModelConfig("lstm", 5, 4, 2)
    params = init_params(cfg, np.random.default_rng(0))
    for name in params:
        if name.startswith(("Wxh", "Whh")):
            params[name][...] = 0.0
    inputs = np.random.default_rng(1).integers(0, 5, (6, 3))
    internals = forward(params, cfg, inputs, init_state(cfg, 3), return_internals=True)[3]
    for layer in range(2):
        np.testing.assert_allclose(internals["f"][layer], 1 / (1 + math.exp(-1.0)), rtol=1e-15)
        np.testing.assert_allclose(internals["i"][layer], 0.5, rtol=1e-15)
        np.testing.assert_allclose(internals["o"][layer], 0.5, rtol=1e-15)
        np.testing.assert_array_equal(internals["g"][layer], 0.0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_sequence_fed_in_two_pieces_gives_the_logits_of_one_pass(cell):
    """The state carried between two pieces holds one entry per layer, and each layer continues from its own:
    truncated BPTT's windows and the sampler rely on it."""
    cfg = ModelConfig(cell, 5, 4, 3)
    params = init_params(cfg, np.random.default_rng(0))
    inputs = np.random.default_rng(1).integers(0, 5, (9, 2))
    whole, _, end_state = forward(params, cfg, inputs, init_state(cfg, 2))
    first, _, carried = forward(params, cfg, inputs[:4], init_state(cfg, 2))
    second, _, pieces_end_state = forward(params, cfg, inputs[4:], carried)
    # the same sums, maybe grouped otherwise by BLAS for another number of columns
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-12, atol=1e-14)
    for layer, (ours, theirs) in enumerate(zip(pieces_end_state, end_state)):
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"layer {layer}")


# ----------------------------------------------------------------------------------- optimizers, clipping
P0, G1, G2 = [1.0, -2.0], [0.5, -1.0], [-0.25, 2.0]  # start, then two gradients (the second flips signs)
EPS = 1e-8


def hand_adagrad(lr=0.1):
    """mem += g^2; p -= lr g / sqrt(mem + eps), per element, written out."""
    p1 = [P0[i] - lr * G1[i] / math.sqrt(G1[i] ** 2 + EPS) for i in range(2)]
    return p1, [p1[i] - lr * G2[i] / math.sqrt(G1[i] ** 2 + G2[i] ** 2 + EPS) for i in range(2)]


def hand_rmsprop(lr=0.1, decay=0.9):
    """cache = decay cache + (1 - decay) g^2; p -= lr g / (sqrt(cache) + eps)."""
    c1 = [(1 - decay) * G1[i] ** 2 for i in range(2)]
    c2 = [decay * c1[i] + (1 - decay) * G2[i] ** 2 for i in range(2)]
    p1 = [P0[i] - lr * G1[i] / (math.sqrt(c1[i]) + EPS) for i in range(2)]
    return p1, [p1[i] - lr * G2[i] / (math.sqrt(c2[i]) + EPS) for i in range(2)]


def hand_adam(lr=0.1, b1=0.9, b2=0.999):
    """Kingma & Ba, in the form of their section 2's last paragraph: m, v moving averages; the bias
    corrections in the step size a_t = lr sqrt(1 - b2^t) / (1 - b1^t); p -= a_t m / (sqrt(v) + eps)."""
    m1 = [(1 - b1) * G1[i] for i in range(2)]
    v1 = [(1 - b2) * G1[i] ** 2 for i in range(2)]
    m2 = [b1 * m1[i] + (1 - b1) * G2[i] for i in range(2)]
    v2 = [b2 * v1[i] + (1 - b2) * G2[i] ** 2 for i in range(2)]
    a1, a2 = lr * math.sqrt(1 - b2) / (1 - b1), lr * math.sqrt(1 - b2**2) / (1 - b1**2)
    p1 = [P0[i] - a1 * m1[i] / (math.sqrt(v1[i]) + EPS) for i in range(2)]
    return p1, [p1[i] - a2 * m2[i] / (math.sqrt(v2[i]) + EPS) for i in range(2)]


def two_steps(optimizer):
    param = np.array(P0)
    after = []
    for grad in (G1, G2):
        optimizer.step(param, np.array(grad))
        after.append(param.tolist())
    return after


@pytest.mark.parametrize(
    "name,options,by_hand",
    [("adagrad", {}, hand_adagrad), ("rmsprop", {"decay": 0.9}, hand_rmsprop), ("adam", {}, hand_adam)],
)
def test_optimizer_steps_match_values_worked_out_by_hand(name, options, by_hand):
    # the same arithmetic, maybe grouped otherwise: a few ulps of values near 1
    np.testing.assert_allclose(two_steps(make_optimizer(name, 0.1, **options)), by_hand(), rtol=0, atol=1e-15)
    # a sign-flipped update (the gradient's sign lost on the way in) misses the hand values by far
    flipped = make_optimizer(name, 0.1, **options)
    update = flipped.update
    flipped.update = lambda param, grad, *scratch, **slots: update(param, -grad, *scratch, **slots)
    assert np.abs(np.subtract(two_steps(flipped), by_hand())).max() > 0.1


def test_clip_modes_on_small_arrays():
    grad = np.array([3.0, -7.0, 0.5])
    assert clip_gradients(grad, 5.0, "value") == math.sqrt(9 + 49 + 0.25)  # the norm before clipping
    assert grad.tolist() == [3.0, -5.0, 0.5]
    grad = np.array([3.0, -4.0])
    assert clip_gradients(grad, 1.0, "norm") == 5.0
    np.testing.assert_allclose(grad, [0.6, -0.8], rtol=1e-15)
    grad = np.array([0.3, -0.4])  # norm 0.5 <= clip: unchanged
    assert clip_gradients(grad, 1.0, "norm") == pytest.approx(0.5, rel=1e-15) and grad.tolist() == [0.3, -0.4]
    for clip in (None, 0.0):  # no clipping
        grad = np.array([30.0, -40.0])
        assert clip_gradients(grad, clip, "value") == 50.0 and grad.tolist() == [30.0, -40.0]


@pytest.mark.parametrize("norm", [1.001, 1.5, 1.999, 3.0])
def test_norm_clipping_scales_any_gradient_longer_than_the_threshold_to_it(norm):
    grad = np.array([0.6, -0.8]) * norm  # direction (0.6, -0.8), length ``norm``
    assert clip_gradients(grad, 1.0, "norm") == pytest.approx(norm, rel=1e-15)
    np.testing.assert_allclose(grad, [0.6, -0.8], rtol=1e-14)


@pytest.mark.parametrize("clip,clip_mode", [(0.05, "norm"), (0.01, "value"), (None, "value"), (0.0, "norm")])
def test_the_trainer_updates_with_the_clipped_gradient(clip, clip_mode):
    """After one Adagrad step the memory holds the square of the gradient the optimizer was given: the
    gradient of the batch, computed here apart from the trainer, clipped as the mode says."""
    vocab = Vocab.from_text(TEXT)
    cfg = ModelConfig("rnn", vocab.size, 16)
    trainer = Trainer(
        cfg, TrainConfig(seq_length=10, batch_size=2), OptimConfig("adagrad", 0.1, clip, clip_mode), vocab, TEXT
    )
    before = {k: v.copy() for k, v in trainer.params.items()}
    inputs, targets, _ = BatchStream(vocab.encode(TEXT), 2, 10).next_batch()
    _, grads, _ = loss_and_grads(before, cfg, inputs, targets, init_state(cfg, 2))
    g = np.concatenate([grads[name].ravel() for name in trainer.params])
    norm = np.linalg.norm(g)
    expected = {"norm": g * min(1.0, (clip or norm) / norm), "value": np.clip(g, -clip, clip) if clip else g}
    _, reported_norm = trainer.train_step()
    assert reported_norm == pytest.approx(norm, rel=1e-12)
    assert clip is None or clip == 0 or np.abs(g).max() > clip  # the clip does bite in this case
    np.testing.assert_allclose(trainer.optimizer.state["mem"], expected[clip_mode] ** 2, rtol=1e-12, atol=1e-30)


# ------------------------------------------------------------------------------------------ gist parity
def gist_pair(text, seed, max_iters=50):
    vocab = Vocab.from_text(text)
    cfg = ModelConfig("rnn", vocab.size, 100)
    weights = init_params(cfg, np.random.default_rng(seed))
    gist = GistRNN(vocab.encode(text), vocab.size, weights)
    trainer = Trainer(
        cfg,
        TrainConfig(max_iters=max_iters, sample_every=0),
        OptimConfig("adagrad", 0.1, 5.0, "value"),
        vocab,
        text,
        params={k: v.copy() for k, v in weights.items()},
    )
    return gist, trainer, weights


def test_gist_parity_step_by_step_through_a_wrap():
    """Each of 50 iterations from the gist's own state: same loss and same updated weights. The gist's
    training is chaotic (see the next test), so comparing states each step is the robust check."""
    gist, trainer, _ = gist_pair(PARITY_TEXT, seed=0)
    names = ("Wxh", "Whh", "Why", "bh", "by")
    wraps = 0
    for _ in range(50):
        for name, array in zip(names, (gist.Wxh, gist.Whh, gist.Why, gist.bh, gist.by)):
            trainer.params[name][...] = array.reshape(trainer.params[name].shape)
        # the optimizer's memory is one vector over the parameters in the trainer's order
        mems = dict(zip(names, gist.mem))
        trainer.optimizer.state = {"mem": np.concatenate([mems[name].ravel() for name in trainer.params])}
        trainer.state = [(gist.hprev.T.copy(),)]
        trainer.stream.cursor, trainer.stream.started = gist.p, gist.n > 0
        wraps += gist.n > 0 and gist.p + 25 + 1 >= len(PARITY_TEXT)
        gist_loss = gist.step()
        loss, _ = trainer.train_step()
        assert loss * 25 == pytest.approx(gist_loss, rel=1e-12)
        for name, array in zip(names, (gist.Wxh, gist.Whh, gist.Why, gist.bh, gist.by)):
            np.testing.assert_allclose(
                trainer.params[name], array.reshape(trainer.params[name].shape), rtol=1e-9, atol=1e-13
            )
        np.testing.assert_allclose(trainer.state[0][0], gist.hprev.T, rtol=1e-9, atol=1e-13)
    assert wraps >= 1


def rounding_sensitivity(gist, weights, n_iters, trials=3):
    """Run ``gist`` for ``n_iters`` iterations and measure how far rounding alone moves its run: the reference
    rerun ``trials`` times with every weight nudged by one ulp in a random direction before each iteration (as
    a different summation order would). Returns (the losses of ``gist``, the relative change of each loss,
    the relative change of the smoothed loss after each iteration), the changes the largest over the trials,
    each (n_iters,)."""
    ulp_rng = np.random.default_rng(0)
    runs = []
    for g in [gist] + [GistRNN(gist.data, gist.V, weights) for _ in range(trials)]:
        losses, smooth = [], []
        for _ in range(n_iters):
            if g is not gist:
                for w in (g.Wxh, g.Whh, g.Why, g.bh, g.by):
                    w *= 1 + np.ldexp(1.0, -52) * (2.0 * ulp_rng.integers(0, 2, w.shape) - 1)
            losses.append(g.step())
            smooth.append(g.smooth_loss)
        runs.append((np.array(losses), np.array(smooth)))
    (losses, smooth), perturbed = runs[0], runs[1:]
    return (
        losses,
        np.max([np.abs(loss - losses) / losses for loss, _ in perturbed], axis=0),
        np.max([np.abs(s - smooth) / smooth for _, s in perturbed], axis=0),
    )


def test_gist_parity_free_running_50_iterations():
    """Free-running, the engine's losses stay as close to the gist's as rounding moves the gist's own: the
    engine sums in another order (and the BLAS kernel picks its own), so the bound is measured on this
    trajectory, not assumed. Step-by-step parity above is the exact check."""
    gist, trainer, weights = gist_pair(PARITY_TEXT, seed=1)
    gist_losses, sensitivity, _ = rounding_sensitivity(gist, weights, 50)
    envelope = np.maximum.accumulate(sensitivity)
    # a trajectory that amplifies one ulp to percent level could hide any bug; this one must not
    assert envelope[-1] < 1e-5, f"the reference trajectory itself is chaotic here ({envelope[-1]:.1e})"
    bound = 10 * envelope + 1e-14  # 1e-14: the few ulps one loss of 25 log terms may differ at iteration 1
    ours = np.array([trainer.train_step()[0] * 25 for _ in range(50)])
    assert gist.p < 25 * 50  # without a wrap the pointer would stand at 1250
    error = np.abs(ours - gist_losses) / gist_losses
    worst = int(np.argmax(error / bound))
    assert (error <= bound).all(), f"iteration {worst + 1}: {error[worst]:.1e} > bound {bound[worst]:.1e}"
    # the bound has teeth: a learning rate off by 0.1% leaves it
    _, off, _ = gist_pair(PARITY_TEXT, seed=1)
    off.optim_config.lr *= 1.001  # the lr of each update comes from the config (and its schedule)
    off_error = np.abs(np.array([off.train_step()[0] * 25 for _ in range(50)]) - gist_losses) / gist_losses
    assert (off_error > bound).any()


def test_gist_parity_smoothed_loss_after_1000_iterations():
    """After 1000 iterations the run is chaotic (one ulp grows to percent-level changes of single losses), so
    the smoothed loss is compared with the spread rounding alone gives the gist's own smoothed loss."""
    if SHAKESPEARE.is_file():  # the session fixture charrnn_data_dir points CHARRNN_DATA_DIR at it
        text = load_corpus("tinyshakespeare").text
    else:  # a user's checkout without the shared data: the same comparison on the offline corpus
        text = load_corpus("pystdlib").text[:1_000_000]
    gist, trainer, weights = gist_pair(text, seed=0, max_iters=1000)
    _, _, smooth_sensitivity = rounding_sensitivity(gist, weights, 1000)
    spread = smooth_sensitivity.max()
    # a spread this wide would leave a bound too loose to catch a learning bug (it is 0.4% to 3% here)
    assert spread < 0.1, f"rounding alone moves the gist's smoothed loss by {spread:.1%}: nothing to compare"
    trainer.run()
    error = abs(trainer.smooth_loss * 25 - gist.smooth_loss) / gist.smooth_loss
    assert error <= 5 * spread, f"smoothed loss differs by {error:.2%}, rounding spread {spread:.2%}"


def test_minchar_preset_is_the_gist_on_the_whole_file():
    """The preset holds nothing out: on 1,000 characters the gist's cursor wraps at iteration 40 (975 + 26 >=
    1000); a 10% holdout made the engine's wrap at iteration 36 and the losses part from there."""
    from charrnn_experiments.train import engine_configs  # here: it imports MLflow, which the other tests skip

    text = (PARITY_TEXT * 2)[:1000]
    cfg = compose_cfg("experiment=minchar")
    train_text, val_text = split_train_val(text, float(cfg.train.val_fraction), int(cfg.train.seq_length))
    vocab = Vocab.from_text(text)
    model, train, optim = engine_configs(cfg, vocab.size)
    weights = init_params(model, np.random.default_rng(1))
    gist = GistRNN(vocab.encode(text), vocab.size, weights)
    gist_losses, sensitivity, _ = rounding_sensitivity(gist, weights, 60)
    trainer = Trainer(
        model, train, optim, vocab, train_text, val_text, params={k: v.copy() for k, v in weights.items()}
    )
    ours = np.array([trainer.train_step()[0] * train.seq_length for _ in range(60)])
    bound = 10 * np.maximum.accumulate(sensitivity) + 1e-14  # as in the free-running parity test
    error = np.abs(ours - gist_losses) / gist_losses
    assert val_text == "" and (error <= bound).all(), f"losses part at iteration {np.argmax(error > bound) + 1}"


def test_gist_weights_round_trip(tmp_path):
    vocab = Vocab.from_text(PARITY_TEXT)
    H, V = 100, vocab.size
    rng = np.random.default_rng(0)
    gist_file = tmp_path / "gist.npz"
    # the gist keeps biases as (n, 1) columns
    np.savez(
        gist_file,
        Wxh=rng.normal(size=(H, V)),
        Whh=rng.normal(size=(H, H)),
        Why=rng.normal(size=(V, H)),
        bh=rng.normal(size=(H, 1)),
        by=rng.normal(size=(V, 1)),
    )
    cfg = ModelConfig("rnn", V, H)
    params = load_initial_weights(gist_file, cfg, vocab)
    assert params["bh"].shape == (H,) and params["Wxh"].shape == (H, V)
    trainer = Trainer(
        cfg,
        TrainConfig(max_iters=3, sample_every=0),
        OptimConfig(),
        vocab,
        PARITY_TEXT,
        checkpoint_dir=tmp_path,
        params=params,
    )
    trainer.run()
    with np.load(tmp_path / "latest.npz", allow_pickle=False) as ckpt:
        assert {"Wxh", "Whh", "Why", "bh", "by", "chars"} <= set(ckpt.files)
        assert ckpt["Wxh"].shape == (H, V) and ckpt["Why"].shape == (V, H)
        assert "".join(ckpt["chars"]) == "".join(vocab.chars)

    with pytest.raises(CheckpointError, match=r"Wxh has shape \(100, \d+\) but the model needs \(50,"):
        load_initial_weights(gist_file, ModelConfig("rnn", V, 50), vocab)


# ---------------------------------------------------------------------------------- training behaviour
def test_training_reduces_loss_and_is_deterministic():
    runs = []
    for _ in range(2):
        rec = Recorder()
        small_trainer("lstm", max_iters=60).run([rec])
        runs.append(rec)
    assert numbers(runs[0]) == numbers(runs[1]) and runs[0].samples == runs[1].samples
    val = [m["val/loss"] for _, m in runs[0].metrics if "val/loss" in m]
    assert val[-1] < val[0] < math.log(Vocab.from_text(TEXT).size) + 0.1


@pytest.mark.parametrize(
    "cell,layers,optim,extra",
    [
        ("rnn", 1, "adagrad", {}),
        ("lstm", 2, "adam", {}),
        ("gru", 2, "rmsprop", {}),
        ("lstm", 2, "adam", {"dropout": 0.3}),
        ("rnn", 2, "adagrad", {"dropout": 0.5}),
        (
            "lstm",
            2,
            "adam",
            {
                "dropout": 0.3,
                "patience": 10,
                "optim_extra": {
                    "weight_decay": 0.1,
                    "schedule": {"name": "cosine", "warmup_iters": 5, "decay_iters": 40},
                },
            },
        ),
        ("gru", 1, "adam", {"optim_extra": {"schedule": {"name": "step", "step_start": 25, "step_every": 3}}}),
    ],
)
def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path, cell, layers, optim, extra):
    full = Recorder()
    uninterrupted = small_trainer(cell, layers, batch_size=3, optim=optim, max_iters=40, log_every=4, **extra)
    uninterrupted.run([full])

    # stopped mid-way through a logging window (iteration 30 of windows of 4), on an evaluation (a budget ending
    # between evaluations adds one, which the uninterrupted run has not), then resumed
    first = Recorder()
    trainer = small_trainer(
        cell, layers, batch_size=3, optim=optim, max_iters=30, log_every=4, checkpoint_dir=tmp_path, **extra
    )
    trainer.run([first])
    second = Recorder()
    split = len(TEXT) * 9 // 10
    resumed = Trainer.from_checkpoint(
        tmp_path / "latest.npz",
        TEXT[:split],
        TEXT[split:],
        tmp_path,
        TrainConfig(**{**vars(trainer.train_config), "max_iters": 40}),
    )
    resumed.run([second])
    assert numbers(first) + numbers(second) == numbers(full)
    assert first.samples + second.samples == full.samples
    for name, value in uninterrupted.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)


def test_the_final_model_is_evaluated_when_the_budget_ends_between_evaluations(tmp_path):
    rec = Recorder()
    result = small_trainer(max_iters=23, eval_every=10, checkpoint_dir=tmp_path).run([rec])
    evaluations = [(step, m) for step, m in rec.metrics if "val/loss" in m]
    assert [step for step, _ in evaluations] == [10, 20, 23]
    val = [m["val/loss"] for _, m in evaluations]
    # val/best_loss is the running minimum of val/loss; val/bpc the same loss in bits
    assert [m["val/best_loss"] for _, m in evaluations] == list(np.minimum.accumulate(val))
    assert all(m["val/bpc"] == pytest.approx(m["val/loss"] / math.log(2), rel=1e-15) for _, m in evaluations)
    assert result.val_loss == val[-1] and result.best_val_loss == min(val)
    assert load_checkpoint(result.last_checkpoint).iteration == 23
    assert load_checkpoint(result.best_checkpoint).progress["best_val_loss"] == min(val)
    # nothing more to measure when the budget ends on an evaluation, or a resumed run has no iteration left
    rec = Recorder()
    Trainer.from_checkpoint(
        result.last_checkpoint, TEXT[: len(TEXT) * 9 // 10], TEXT[len(TEXT) * 9 // 10 :], tmp_path
    ).run([rec])
    assert not rec.metrics


def test_best_npz_is_the_model_of_the_lowest_validation_loss_even_when_later_ones_are_higher(tmp_path):
    # validated on characters it never trains on: the better it learns its text, the higher its val/loss, in any
    # order BLAS sums
    train_text, val_text = "ab" * 300, "cd" * 30
    vocab = Vocab.from_text(train_text + val_text)
    trainer = Trainer(
        ModelConfig("rnn", vocab.size, 16),
        TrainConfig(
            seq_length=10, batch_size=2, max_iters=60, log_every=5, eval_every=10, sample_every=0, eval_batch_size=4
        ),
        OptimConfig("adagrad", 0.1, 5.0),
        vocab,
        train_text,
        val_text,
        tmp_path,
    )
    rec = Recorder()
    result = trainer.run([rec])
    history = [(step, m["val/loss"]) for step, m in rec.metrics if "val/loss" in m]
    lowest_step, lowest = min(history, key=lambda point: point[1])
    assert lowest_step < history[-1][0], history  # the history this test is about: its lowest point is not last
    best = load_checkpoint(tmp_path / "best.npz")
    assert (best.iteration, best.progress["val_loss"]) == (lowest_step, lowest)
    assert (result.best_checkpoint, result.best_val_loss) == (str(tmp_path / "best.npz"), lowest)
    improved = [step for step, loss in history if loss == min(v for s, v in history if s <= step)]
    assert [step for step, is_best in rec.checkpoints if is_best] == improved
    # and its weights are that model's: evaluated again, they give the lowest loss
    assert Trainer.from_checkpoint(tmp_path / "best.npz", train_text, val_text).evaluate() == lowest


def test_training_without_validation_text_finishes_with_a_checkpoint(tmp_path):
    vocab = Vocab.from_text(TEXT)
    trainer = Trainer(
        ModelConfig("rnn", vocab.size, 8),
        TrainConfig(seq_length=10, max_iters=23, log_every=5, eval_every=10, sample_every=0),
        OptimConfig(),
        vocab,
        TEXT,
        "",
        tmp_path,
    )
    rec = Recorder()
    result = trainer.run([rec])
    assert (result.status, result.val_loss, result.best_val_loss, result.best_checkpoint) == (
        "finished",
        None,
        None,
        None,
    )
    assert not any(k.startswith("val/") for _, m in rec.metrics for k in m)
    assert load_checkpoint(tmp_path / "latest.npz").iteration == 23 and not (tmp_path / "best.npz").exists()
    with pytest.raises(DataError, match="no validation text"):
        trainer.evaluate()


def test_request_stop_saves_a_checkpoint_and_reports_interrupted(tmp_path):
    trainer = small_trainer(checkpoint_dir=tmp_path, max_iters=1000)

    class StopAtTen(Callback):
        def on_metrics(self, metrics, step):
            if step == 10:
                trainer.request_stop("SIGTERM")

    result = trainer.run([StopAtTen()])
    assert result.status == "interrupted" and result.reason == "SIGTERM" and result.iteration == 10
    assert result.stop == StopReason.REQUESTED
    assert load_checkpoint(result.last_checkpoint).iteration == 10


def test_divergence_stops_with_a_reason_and_untouched_weights():
    trainer = small_trainer(max_iters=100)
    trainer.params["Why"][0, 0] = np.inf
    before = {k: v.copy() for k, v in trainer.params.items()}
    result = trainer.run()
    assert (result.status, result.stop, result.iteration) == ("diverged", StopReason.DIVERGED, 0)
    assert "iteration 1" in result.reason and "lr" in result.reason
    for name, value in before.items():
        np.testing.assert_array_equal(trainer.params[name], value)


def test_stop_conditions():
    assert small_trainer(max_iters=None, max_seconds=0.3, eval_every=1000).run().reason.startswith("used the time")
    result = small_trainer(max_iters=None, target_val_loss=10.0, eval_every=5).run()
    assert result.iteration == 5 and "target_val_loss" in result.reason
    with pytest.raises(ConfigError, match="no stop condition"):
        TrainConfig(max_iters=None)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ModelConfig("transformer", 5, 4), "unknown cell"),
        (lambda: ModelConfig("rnn", 5, 0), "hidden_size must be a positive integer, got 0"),
        (lambda: ModelConfig("rnn", 5, 2.5), "hidden_size must be a positive integer, got 2.5"),
        (lambda: ModelConfig("rnn", 5, NAN), "hidden_size must be a positive integer, got nan"),
        (lambda: ModelConfig("rnn", 5, 4, True), "num_layers must be a positive integer, got True"),
        (lambda: ModelConfig("rnn", 0, 4), "vocab_size must be a positive integer"),
        (lambda: ModelConfig("rnn", 5, 4, dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
        (lambda: ModelConfig("rnn", 5, 4, dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (lambda: ModelConfig("rnn", 5, 4, dropout=NAN), "dropout must be a finite number, got nan"),
        (lambda: OptimConfig("adagrad", 0.0), "lr must be positive, got 0"),
        (lambda: OptimConfig("adagrad", NAN), "lr must be a finite number, got nan"),
        (lambda: OptimConfig("adagrad", INF), "lr must be a finite number, got inf"),
        (lambda: OptimConfig("adagrad", "0.1"), "lr must be a number, got '0.1'"),
        (lambda: OptimConfig("sgd"), "unknown optimizer 'sgd'"),
        (lambda: OptimConfig("adagrad", 0.1, NAN), "clip must be a finite number, got nan"),
        (lambda: OptimConfig("adagrad", 0.1, INF), "clip must be a finite number, got inf"),
        (lambda: OptimConfig("adagrad", 0.1, -1.0), "clip must be >= 0, got -1"),
        (lambda: OptimConfig("adagrad", 0.1, 5.0, "sideways"), "clip_mode"),
        (lambda: OptimConfig("adam", 1e-3, options={"beta1": 1.0}), r"beta1 must be in \[0, 1\), got 1"),
        (lambda: OptimConfig("adam", 1e-3, options={"beta2": NAN}), "beta2 must be a finite number"),
        (lambda: OptimConfig("rmsprop", 1e-3, options={"decay": -0.5}), r"decay must be in \[0, 1\)"),
        (lambda: OptimConfig("rmsprop", 1e-3, options={"eps": 0.0}), "eps must be positive"),
        (lambda: OptimConfig("adagrad", 0.1, options={"momentum": 0.9}), "adagrad has no option 'momentum'"),
        (lambda: TrainConfig(seq_length=0), "seq_length must be a positive integer, got 0"),
        (lambda: TrainConfig(batch_size=1.5), "batch_size must be a positive integer, got 1.5"),
        (lambda: TrainConfig(log_every=True), "log_every must be a positive integer, got True"),
        (lambda: TrainConfig(max_iters=-1), "max_iters must be an integer >= 0"),
        (lambda: TrainConfig(max_iters=INF), r"max_iters must be an integer >= 0 \(or None\), got inf"),
        (lambda: TrainConfig(max_seconds=0.0), "max_seconds must be positive, got 0"),
        (lambda: TrainConfig(max_seconds=NAN), "max_seconds must be a finite number, got nan"),
        (lambda: TrainConfig(max_seconds=INF), "max_seconds must be a finite number, got inf"),
        (lambda: TrainConfig(target_val_loss=NAN), "target_val_loss must be a finite number, got nan"),
        (lambda: TrainConfig(target_val_loss=-INF), "target_val_loss must be a finite number, got -inf"),
        (lambda: TrainConfig(target_val_loss=-1.0), "target_val_loss must be >= 0, got -1"),
        (lambda: TrainConfig(seed=-1), "seed must be an integer >= 0, got -1"),
        (lambda: TrainConfig(eval_max_chars=1), "eval_max_chars must be an integer >= 2"),
        (lambda: TrainConfig(sample_every=-1), "sample_every must be an integer >= 0"),
        (lambda: TrainConfig(sample_temperature=NAN), "sample_temperature must be a finite number"),
        (lambda: split_train_val(TEXT, NAN, 25), "val_fraction must be a finite number, got nan"),
        (lambda: split_train_val(TEXT, INF, 25), "val_fraction must be a finite number, got inf"),
        (lambda: split_train_val(TEXT, 1.0, 25), r"val_fraction must be in \[0, 1\), got 1.0"),
        (lambda: split_train_val(TEXT, True, 25), "val_fraction must be a number, got True"),
        (lambda: split_train_val(TEXT, 0.1, NAN), "seq_length must be a positive integer, got nan"),
        (lambda: sample({}, ModelConfig("rnn", 5, 4), Vocab("abcde"), 10, top_k=0), "top_k must be a positive integer"),
        (
            lambda: sample({}, ModelConfig("rnn", 5, 4), Vocab("abcde"), 10, temperature=NAN),
            "temperature must be a finite",
        ),
        (lambda: sample({}, ModelConfig("rnn", 5, 4), Vocab("abcde"), -1), "length must be an integer >= 0"),
        (lambda: sample({}, ModelConfig("rnn", 5, 4), Vocab("abcde"), 10, seed=-3), "seed must be an integer >= 0"),
    ],
)
def test_invalid_settings_fail_with_one_line_naming_the_key(make, match):
    with pytest.raises(ConfigError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------------------------- sampling
def test_sampling():
    trainer = small_trainer("gru", max_iters=30)
    trainer.run()
    p, cfg, vocab = trainer.params, trainer.model_config, trainer.vocab
    a = sample(p, cfg, vocab, 50, seed=3, prime="The ")
    assert len(a) == 50 and set(a) <= set(vocab.chars)
    assert a == sample(p, cfg, vocab, 50, seed=3, prime="The ")
    assert a != sample(p, cfg, vocab, 50, seed=4, prime="The ")
    greedy = sample(p, cfg, vocab, 40, argmax=True, seed=1)
    assert greedy == sample(p, cfg, vocab, 40, argmax=True, seed=2) == sample(p, cfg, vocab, 40, top_k=1, seed=5)
    with pytest.raises(DataError, match="'@'"):
        sample(p, cfg, vocab, 10, prime="email@home")
    with pytest.raises(ConfigError, match="temperature"):
        sample(p, cfg, vocab, 10, temperature=0)


LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -2.0])


def model_that_always_predicts(logits):
    """A one-layer RNN whose every prediction is ``logits`` (Why = 0: the hidden state never reaches the
    output), so its samples are independent draws from one distribution."""
    cfg = ModelConfig("rnn", logits.size, 4)
    params = init_params(cfg, np.random.default_rng(0))
    params["Why"][...] = 0.0
    params["by"][...] = logits
    return params, cfg, Vocab("abcdefghij"[: logits.size])


@pytest.mark.parametrize("temperature,top_k", [(2.0, None), (0.5, None), (0.5, 3), (2.0, 4)])
def test_samples_follow_the_softmax_of_the_logits_over_the_temperature(temperature, top_k):
    """Character frequencies of N draws against softmax(logits / T) over the top_k most likely characters: a
    fixed seed, and a bound of 5 standard errors, sqrt(p (1 - p) / N), per character. The temperature applied
    twice (T^2) or inverted (1/T) moves some probability by 0.08 or more; 5 standard errors are at most 0.018."""
    params, cfg, vocab = model_that_always_predicts(LOGITS)
    n = 20_000
    text = sample(params, cfg, vocab, n, temperature=temperature, top_k=top_k, seed=0)
    frequency = np.array([text.count(c) for c in vocab.chars]) / n
    kept = np.argsort(-LOGITS)[: top_k or LOGITS.size]
    p = np.zeros(LOGITS.size)
    p[kept] = np.exp(LOGITS[kept] / temperature)
    p /= p.sum()
    bound = 5 * np.sqrt(p * (1 - p) / n)  # 0 where top_k leaves a character out: it never appears
    assert (np.abs(frequency - p) <= bound).all(), (frequency.round(4), p.round(4))


def test_sampling_from_a_checkpoint(tmp_path):
    trainer = small_trainer(checkpoint_dir=tmp_path, max_iters=20)
    trainer.run()
    params, cfg, vocab = load_model(tmp_path / "latest.npz")
    assert cfg == trainer.model_config and vocab == trainer.vocab
    assert sample(params, cfg, vocab, 30, seed=0) == sample(trainer.params, cfg, vocab, 30, seed=0)


# ------------------------------------------------------------------------------------- checkpoint files
def test_bad_checkpoint_files_get_clear_errors(tmp_path):
    trainer = small_trainer(checkpoint_dir=tmp_path, max_iters=10)
    trainer.run()
    good = (tmp_path / "latest.npz").read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or not an .npz"):
        load_checkpoint(truncated)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, Wxh=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(pickled)

    # files that are no .npz at all are called that, not "pickled objects"
    raw_pickle = tmp_path / "model.pkl"
    raw_pickle.write_bytes(pickle.dumps({"Wxh": [1, 2]}))
    text = tmp_path / "notes.npz"
    text.write_text("these are not weights\n")
    single_array = tmp_path / "weights.npy"
    np.save(single_array, np.zeros(3))
    for path in (raw_pickle, text, single_array):
        with pytest.raises(CheckpointError, match="is not an .npz file") as err:
            load_checkpoint(path)
        assert "pickle" not in str(err.value)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a charrnn checkpoint"):
        load_checkpoint(foreign)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")


def test_checkpoint_round_trip_preserves_everything(tmp_path):
    trainer = small_trainer("lstm", 2, checkpoint_dir=tmp_path, optim="adam", max_iters=12)
    trainer.run()
    trainer.metadata = {"data.name": "file", "data.path": "/some/text.txt"}
    path = save_checkpoint(tmp_path / "copy.npz", trainer.checkpoint())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not a private temp file
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == trainer.model_config and ckpt.vocab == trainer.vocab
    assert ckpt.iteration == 12 and ckpt.optim_state["t"] == 12
    assert ckpt.metadata == {"data.name": "file", "data.path": "/some/text.txt"}
    for name, value in trainer.params.items():
        np.testing.assert_array_equal(ckpt.params[name], value)
    for layer, saved in zip(trainer.state, ckpt.hidden):
        assert len(saved) == 2 and all(np.array_equal(a, b) for a, b in zip(layer, saved))


def test_a_two_layer_vanilla_rnn_learns_past_the_unigram_loss(tmp_path):
    """Deeper RNNs do not start from the gist's 0.01-scaled weights: through two such layers the signal and its
    gradient vanish, and the model stayed at the unigram loss (2.92 here after 200 Adam updates)."""
    text = write_small_text(tmp_path).read_text()
    vocab = Vocab.from_text(text)
    p = np.bincount(vocab.encode(text), minlength=vocab.size) / len(text)
    unigram = -(p[p > 0] * np.log(p[p > 0])).sum()
    trainer = Trainer(
        ModelConfig("rnn", vocab.size, 32, 2),
        TrainConfig(seq_length=16, batch_size=8, max_iters=200, eval_every=200, seed=0),
        OptimConfig("adam", 0.002, 5.0),
        vocab,
        text[:5000],
        text[5000:],
    )
    result = trainer.run()
    assert result.val_loss < unigram - 1.0, (result.val_loss, unigram)  # 1.13 with the fix


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_validation_stream_reads_what_it_reads_alone(cell):
    # the streams are independent: each one's loss is that of its own stretch of text evaluated as one stream
    # from the zero state, and val/loss is their character-weighted mean
    trainer = small_trainer(cell, layers=2, max_iters=20)
    trainer.run()
    streams = trainer.evaluate_streams()
    assert len(streams.starts) == trainer.train_config.eval_batch_size == 4
    length = len(trainer.val_ix) // 4
    for b, start in enumerate(streams.starts):
        alone = evaluate_streams(
            trainer.params,
            trainer.model_config,
            trainer.val_ix[start : start + length],
            1,
            trainer.train_config.seq_length,
            None,
        )
        assert alone.chars[0] == streams.chars[b] == length - 1
        assert alone.per_stream[0] == pytest.approx(streams.per_stream[b], rel=1e-12)
    assert trainer.evaluate() == streams.loss
    assert streams.loss == pytest.approx(np.average(streams.per_stream, weights=streams.chars), rel=1e-12)


def test_the_worst_validation_stream_is_reported_with_every_evaluation():
    rec = Recorder()
    trainer = small_trainer("lstm", max_iters=20, eval_every=10)
    trainer.run([rec])
    evaluations = [m for _, m in rec.metrics if "val/loss" in m]
    assert len(evaluations) == 2
    assert evaluations[-1]["val/worst_stream_loss"] == trainer.evaluate_streams().per_stream.max()
    assert all(m["val/worst_stream_loss"] > m["val/loss"] for m in evaluations)
