"""`charrnn-sample`: text from a run's checkpoint (by MLflow run id) or from a checkpoint file.

The text is written as it is generated; a long one shows progress on stderr, and Ctrl-C (or SIGTERM)
keeps what was generated so far.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from charrnn.checkpoint import load_model
from charrnn.checks import check_int, check_number
from charrnn.errors import CharRNNError, ConfigError
from charrnn.sample import generate
from charrnn_experiments import tracking
from charrnn_experiments.faults import exit_with_error, first_line
from charrnn_experiments.schema import SampleAppSchema, run_reporting_config_errors
from charrnn_experiments.store import Store, use_http_defaults

PROGRESS_FROM_CHARS = 5000  # longer samples show a progress bar on stderr


def checkpoint_of(cfg: DictConfig, into: Path) -> Path:
    if (cfg.run is None) == (cfg.checkpoint is None):
        raise ConfigError("give exactly one of run=<MLflow run id> or checkpoint=<file.npz>")
    if cfg.checkpoint is not None:
        return Path(HydraConfig.get().runtime.cwd, str(cfg.checkpoint))
    if cfg.which not in ("best", "latest"):
        raise ConfigError(f"which must be best or latest, got {cfg.which!r}")
    store = Store.resolve(cfg.tracking.uri, HydraConfig.get().runtime.cwd)
    client = store.client(create=False)
    run_id = str(cfg.run)
    try:
        stored = {a.path for a in client.list_artifacts(run_id, tracking.CHECKPOINTS)}
    except MlflowException:
        raise ConfigError(f"run={run_id}: no such run in {store.uri}") from None
    which = f"{tracking.CHECKPOINTS}/{cfg.which}.npz"
    if which == tracking.BEST_CHECKPOINT and which not in stored and tracking.LATEST_CHECKPOINT in stored:
        print(
            f"note: run {run_id} has no best.npz (it was never evaluated); sampling from its latest checkpoint",
            file=sys.stderr,
            flush=True,
        )
        which = tracking.LATEST_CHECKPOINT
    if which not in stored:
        raise ConfigError(f"run {run_id} has no {which} in the store")
    return Path(client.download_artifacts(run_id, which, str(into)))


def sampling_options(cfg: DictConfig) -> dict:
    """The sampling keys, checked before any checkpoint is read: one line naming the key."""
    if not isinstance(cfg.argmax, bool):
        raise ConfigError(f"argmax must be true or false, got {cfg.argmax!r}")
    check_int("length", cfg.length, 0)
    check_int("top_k", cfg.top_k, 1, allow_none=True)
    check_int("seed", cfg.seed, 0)
    if not cfg.argmax:
        check_number("temperature", cfg.temperature, positive=True)
    return {
        "length": cfg.length,
        "top_k": cfg.top_k,
        "seed": cfg.seed,
        "temperature": cfg.temperature,
        "argmax": cfg.argmax,
        "prime": "" if cfg.prime is None else str(cfg.prime),
    }  # prime=123: "123"


@hydra.main(version_base="1.3", config_path="pkg://charrnn_conf", config_name="sample")
def app(cfg: DictConfig) -> None:
    try:
        options = sampling_options(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            params, model_config, vocab = load_model(checkpoint_of(cfg, Path(tmp)))
        chars = generate(params, model_config, vocab, **options)
        first = next(chars, "")  # checks the options against the model before anything is written
    except (CharRNNError, MlflowException) as err:
        exit_with_error(first_line(err))
    length = options["length"]
    stopped: list[str] = []  # a signal asks the loop to stop after the character it is writing
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped.append(f"received {signal.Signals(signum).name}"))
    from tqdm import tqdm

    sys.stdout.write(options["prime"] + first)
    written = len(first)
    with tqdm(total=length, unit="char", file=sys.stderr, disable=length < PROGRESS_FROM_CHARS, mininterval=1.0) as bar:
        for char in chars:
            if stopped:
                break
            sys.stdout.write(char)
            written += 1
            if written % 1000 == 0:
                bar.update(1000)
    sys.stdout.write("\n")
    if stopped:
        sys.stdout.flush()
        print(f"stopped: {stopped[0]} after {written} of {length} characters (kept above)", file=sys.stderr, flush=True)
        sys.exit(130)


def main() -> None:
    use_http_defaults()
    run_reporting_config_errors(app, SampleAppSchema)
