"""`charrnn-sample`: text from a run's checkpoint (by MLflow run id) or from a checkpoint file."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from charrnn.checkpoint import load_model
from charrnn.errors import CharRNNError, ConfigError
from charrnn.sample import sample
from charrnn_experiments import tracking


def checkpoint_of(cfg: DictConfig, into: Path) -> Path:
    if (cfg.run is None) == (cfg.checkpoint is None):
        raise ConfigError("give exactly one of run=<MLflow run id> or checkpoint=<file.npz>")
    if cfg.checkpoint is not None:
        return Path(HydraConfig.get().runtime.cwd, str(cfg.checkpoint))
    if cfg.which not in ("best", "latest"):
        raise ConfigError(f"which must be best or latest, got {cfg.which!r}")
    store = tracking.Store.resolve(cfg.tracking.uri, HydraConfig.get().runtime.cwd)
    tracker = tracking.MlflowTracker(store.client(), str(cfg.run))
    return Path(tracker.download(f"{tracking.CHECKPOINTS}/{cfg.which}.npz", into))


@hydra.main(version_base="1.3", config_path="pkg://charrnn_conf", config_name="sample")
def app(cfg: DictConfig) -> None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            params, model_config, vocab = load_model(checkpoint_of(cfg, Path(tmp)))
        text = sample(params, model_config, vocab, int(cfg.length), temperature=float(cfg.temperature),
                      top_k=cfg.top_k, prime=str(cfg.prime), argmax=bool(cfg.argmax), seed=int(cfg.seed))
    except (CharRNNError, MlflowException) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    print(cfg.prime + text)


def main() -> None:
    app()
