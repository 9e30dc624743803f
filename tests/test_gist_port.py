"""The benchmarks' speed yardstick (benchmarks/gist_port.py, the gist's loop as written) against the parity oracle
(charrnn.reference.GistRNN): the same algorithm, so the same losses to the last bit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from charrnn.data import Vocab
from charrnn.model import ModelConfig, init_params
from charrnn.reference import GistRNN
from conftest import PARITY_TEXT

pytestmark = pytest.mark.fast  # the engine and config tests: pytest -m fast -n 2

GIST_PORT = Path(__file__).resolve().parents[1] / "benchmarks" / "gist_port.py"


def load_gist_port():
    """benchmarks/ is a folder of scripts, not a package: load the module from its file."""
    spec = importlib.util.spec_from_file_location("gist_port", GIST_PORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gist_port_losses_equal_the_oracles_to_the_last_bit():
    """100 iterations through three wraps of the text, from the same weights. Both run the same float64
    operations in the same order (np.dot and the @ operator reach the same BLAS call for these shapes; a one-hot
    product sums one nonzero term, an outer product none), so equality is exact, not within a tolerance: a
    bound would hide a reordered sum, which is what makes one yardstick slower or faster than the other."""
    gist_training = load_gist_port().gist_training
    vocab = Vocab.from_text(PARITY_TEXT)
    weights = init_params(ModelConfig("rnn", vocab.size, 100, dtype="float64"), np.random.default_rng(3))
    oracle = GistRNN(vocab.encode(PARITY_TEXT), vocab.size, weights)
    port = gist_training(PARITY_TEXT, vocab.chars, weights)
    wraps = 0
    for i in range(100):
        wraps += oracle.n > 0 and oracle.p + 25 + 1 >= len(PARITY_TEXT)
        expected = oracle.step()
        loss, smooth_loss = next(port)
        assert (loss, smooth_loss) == (expected, oracle.smooth_loss), f"iteration {i + 1}"
    assert wraps == 3
