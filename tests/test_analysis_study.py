"""The study_cells preset: the three cells really are matched in parameter count, on the same data and budget."""

from __future__ import annotations

from omegaconf import OmegaConf

from charrnn.model import ModelConfig, count_params
from conftest import compose_cfg

PYSTDLIB_VOCAB = 96  # the preset's sizes are matched for this vocabulary


def study_config(cell: str, hydra: bool = False):
    return compose_cfg("experiment=study_cells", f"model={cell}", hydra=hydra)


def test_study_cells_matches_parameter_counts_within_one_percent():
    counts = {}
    for cell in ("rnn", "lstm", "gru"):
        cfg = study_config(cell)
        assert cfg.model.cell == cell and cfg.data.name == "pystdlib" and cfg.tracking.experiment == "study_cells"
        counts[cell] = count_params(ModelConfig(cell, PYSTDLIB_VOCAB, int(cfg.model.hidden_size),
                                                int(cfg.model.num_layers)))
    assert max(counts.values()) / min(counts.values()) < 1.01, counts


def test_study_cells_sweeps_cells_and_seeds_with_one_budget():
    cfg = study_config("lstm", hydra=True)
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {"model": "rnn,lstm,gru", "train.seed": "1,2"}
    assert cfg.train.max_iters == 3000 and cfg.optim.name == "adam" and cfg.optim.lr == 0.002
