"""Recording a model's internals, the gradient-flow numbers, the figures and the HTML explorer."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from charrnn.data import Vocab
from charrnn.model import ModelConfig, forward, init_params, init_state, softmax_cross_entropy
from charrnn_analysis.errors import AnalysisError
from charrnn_analysis.explorer import write_explorer
from charrnn_analysis.figures import (
    gate_saturation_figure,
    gradient_flow_figure,
    heatmap_figure,
    save_figure,
    text_activation_figure,
)
from charrnn_analysis.gradients import hidden_state_gradients, recurrent_spectra
from charrnn_analysis.ranking import rank_units
from charrnn_analysis.record import Recording, record

TEXT = "".join(
    f"def f{i}(x, y=[{i}, ({i} + 1)]):\n    # note {i}\n    return \"s{i}\" + 't' + str(x)  // {i}\n" for i in range(40)
)
STATES = {"rnn": ["h"], "lstm": ["h", "c", "i", "f", "o", "g"], "gru": ["h", "r", "z", "n"]}


def tiny_model(cell: str, hidden: int = 12, layers: int = 2, scale: float = 3.0):
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(cell, vocab.size, hidden, layers)
    # Scaled-up random weights: activations spread over (-1, 1) as in a trained model, without training.
    params = {k: v * scale for k, v in init_params(config, np.random.default_rng(7)).items()}
    return params, config, vocab


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recording_is_deterministic_chunk_invariant_and_complete(cell):
    params, config, vocab = tiny_model(cell)
    first = record(params, config, vocab, TEXT, chunk_size=97, dtype="float32")
    again = record(params, config, vocab, TEXT, chunk_size=97, dtype="float32")
    whole = record(params, config, vocab, TEXT, chunk_size=len(TEXT), dtype="float32")
    assert first.states == STATES[cell]
    assert sorted(first.arrays) == sorted(f"{s}.{layer}" for s in STATES[cell] for layer in range(2))
    for key, values in first.arrays.items():
        assert values.shape == (len(TEXT), 12)
        np.testing.assert_array_equal(values, again.arrays[key])
        # carried state == one pass, up to the stored float32's last bit: a GEMM over 97 rows and one over
        # 3260 may sum in another order, and a float64 difference of an ulp can round to the other float32
        one_ulp = np.spacing(np.maximum(np.abs(values), np.abs(whole.arrays[key])))
        assert (np.abs(values - whole.arrays[key]) <= one_ulp).all(), key
    np.testing.assert_array_equal(first.loss, again.loss)
    # The recorded top-layer h is exactly what the engine's forward produces, and the loss matches its logits.
    logits, _, _, internals = forward(params, config, vocab.encode(TEXT)[:, None], init_state(config, 1), True)
    np.testing.assert_allclose(first.arrays["h.1"], internals["h"][1][:, 0], atol=1e-6)
    ix = vocab.encode(TEXT)
    nats, _ = softmax_cross_entropy(logits[:-1], ix[1:, None])
    assert np.nanmean(first.loss) == pytest.approx(nats / (len(TEXT) - 1), rel=1e-5)
    assert np.isnan(first.loss[-1])


def test_recording_round_trips_without_pickle(tmp_path):
    params, config, vocab = tiny_model("lstm")
    rec = record(params, config, vocab, TEXT[:500], chunk_size=128, offset=1000, meta={"run_id": "abc"})
    path = rec.save(tmp_path / "sub" / "rec.npz")
    with np.load(path, allow_pickle=False) as npz:  # loads without pickle, float16 activations
        assert npz["act/c.0"].dtype == np.float16
    back = Recording.load(path)
    assert back.text == TEXT[:500] and back.meta["run_id"] == "abc" and back.meta["cell"] == "lstm"
    assert back.offsets[0] == 1000 and back.offsets[-1] == 1499
    np.testing.assert_array_equal(back.arrays["g.1"], rec.arrays["g.1"])
    A, labels = back.unit_matrix()
    assert A.shape == (500, 24) and labels[0] == "c.0:0" and labels[-1] == "c.1:11"
    assert np.abs(A).max() <= 1.0  # c is shown as tanh(c)
    np.testing.assert_allclose(back.unit("c.1:11"), A[:, -1])


def test_recording_bad_inputs_fail_clearly(tmp_path):
    params, config, vocab = tiny_model("rnn")
    rec = record(params, config, vocab, TEXT[:50])
    with pytest.raises(AnalysisError, match="unknown unit"):
        rec.unit("h0:1")
    with pytest.raises(AnalysisError, match="unit 'h.0:99' is out of range: layer 0 of 'h' has units 0..11"):
        rec.unit("h.0:99")
    with pytest.raises(AnalysisError, match="no 'c' in layer 0"):
        rec.unit("c.0:1")
    with pytest.raises(AnalysisError, match="empty text"):
        record(params, config, vocab, "")
    with pytest.raises(AnalysisError, match="dtype"):
        record(params, config, vocab, "ab", dtype="int8")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(AnalysisError, match="not a charrnn recording"):
        Recording.load(pickled)
    with pytest.raises(AnalysisError, match="does not exist"):
        Recording.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_hidden_state_gradients_match_finite_differences(cell):
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(cell, vocab.size, 5, 1)
    params = {k: v * 2 for k, v in init_params(config, np.random.default_rng(3)).items()}
    ix = vocab.encode(TEXT[:40]).reshape(2, 20).T  # (20, 2)
    inputs, targets = ix[:-1], ix[1:]
    t = 7
    dh = hidden_state_gradients(params, config, inputs, targets, last_step_only=False)[0][t]

    def loss(delta):  # the full loss with h_t nudged by delta: steps <= t, then the rest from the nudged state
        state = init_state(config, 2)
        logits_head, _, state = forward(params, config, inputs[: t + 1], state)
        state = [(state[0][0] + delta, *state[0][1:])]
        logits_t = (state[0][0] @ params["Why"].T + params["by"])[None]
        logits_tail, _, _ = forward(params, config, inputs[t + 1 :], state)
        return (
            softmax_cross_entropy(logits_head[:t], targets[:t])[0]
            + softmax_cross_entropy(logits_t, targets[t : t + 1])[0]
            + softmax_cross_entropy(logits_tail, targets[t + 1 :])[0]
        )

    numeric = np.zeros_like(dh)
    for index in np.ndindex(*dh.shape):
        d = np.zeros_like(dh)
        d[index] = 1e-6
        numeric[index] = (loss(d) - loss(-d)) / 2e-6
    np.testing.assert_allclose(dh, numeric, rtol=1e-4, atol=1e-8)


def pixels_vary(path) -> bool:
    image = imread(path)
    return path.stat().st_size > 5000 and image.ndim == 3 and float(image[..., :3].std()) > 0.05


def test_figures_are_written_and_not_blank(tmp_path):
    params, config, vocab = tiny_model("lstm")
    rec = record(params, config, vocab, TEXT[:1200])
    paths = [
        save_figure(text_activation_figure(rec.text[:800], rec.unit("c.0:1")[:800], "c.0:1"), tmp_path / "text.png"),
        save_figure(heatmap_figure(rec.layer("h", 1)[:100], rec.text[:100], "h1"), tmp_path / "heat.png"),
        save_figure(gate_saturation_figure(rec), tmp_path / "sat.png"),
        save_figure(
            gradient_flow_figure(
                params,
                config,
                vocab.encode(TEXT[:60]).reshape(2, 30).T[:-1],
                vocab.encode(TEXT[:60]).reshape(2, 30).T[1:],
            ),
            tmp_path / "grad.png",
        ),
    ]
    for path in paths:
        assert pixels_vary(path), path
    assert set(recurrent_spectra(params, config)) == {f"layer {layer} / {g}" for layer in (0, 1) for g in "ifog"}
    rnn_params, rnn_config, _ = tiny_model("rnn")
    with pytest.raises(AnalysisError, match="no gates"):
        gate_saturation_figure(record(rnn_params, rnn_config, vocab, TEXT[:50]))
    with pytest.raises(AnalysisError, match="activations for a text"):
        text_activation_figure("abc", np.zeros(2))


def test_explorer_is_self_contained_and_lists_units(tmp_path):
    params, config, vocab = tiny_model("gru")
    text = TEXT[:600] + "</script><b>"  # must neither end the data script nor inject markup
    vocab = Vocab.from_text(text)
    config = ModelConfig("gru", vocab.size, 12, 2)
    params = init_params(config, np.random.default_rng(0))
    rec = record(params, config, vocab, text)
    A, labels = rec.unit_matrix()
    top = rank_units(A, labels, text, ["in_comment", "bracket_depth"], top_k=2)
    page = write_explorer(tmp_path / "explorer.html", text, A, labels, top, "demo").read_text()
    assert page.count("<option ") == len(labels) == 24
    assert '<option value="23">h.1:11</option>' in page
    assert page.count('class="unit-row"') == 4 and "in_comment" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count("</script>") == 2 and "<b>" not in page.split('<script id="data"')[1]
    assert len(page) > len(text) * 24 // 2  # the activations are embedded


def test_a_checkpoint_leads_back_to_its_own_validation_split(tmp_path):
    from charrnn.checkpoint import Checkpoint, save_checkpoint
    from charrnn_analysis.sources import model_from_checkpoint, validation_text

    text = "".join(f"line {i}: x = [{i}, {i * i}]\n" for i in range(200))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    vocab = Vocab.from_text(text)
    config = ModelConfig("rnn", vocab.size, 4)
    meta = {"data.name": "file", "data.path": str(corpus), "train.val_fraction": 0.25, "train.seq_length": 10}
    path = save_checkpoint(
        tmp_path / "m.npz", Checkpoint(init_params(config, np.random.default_rng(0)), vocab, config, metadata=meta)
    )
    val, offset, _ = validation_text(model_from_checkpoint(str(path)))
    assert offset == len(text) - len(text) // 4 and val == text[offset:]
