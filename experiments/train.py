"""`charrnn-train`: the Hydra app. Config -> engine -> MLflow, nothing more.

With no overrides it runs the main job (the gist's model on the offline `pystdlib` corpus for two
minutes) and prints the run id, the validation loss, a sample and the `mlflow ui` command.
`-m` sweeps; every job of a sweep is a child run nested under the sweep's parent run.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from charrnn.checkpoint import load_initial_weights
from charrnn.data import Vocab, load_corpus, split_train_val
from charrnn.errors import CharRNNError, ConfigError
from charrnn.model import ModelConfig
from charrnn.train import OptimConfig, TrainConfig, Trainer
from charrnn_analysis.trained_run import ARTIFACT_DIR, record_finished_run
from charrnn_experiments import tracking
from charrnn_experiments.progress import ProgressCallback
from charrnn_experiments.sweep_callback import job_label

log = logging.getLogger("charrnn")

# The engine's stop status -> the MLflow run status.
RUN_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED"}
FAILED_OBJECTIVE = math.inf  # what a failed sweep job reports to the sweeper
DATA_KEYS = ("data.name", "data.path", "train.val_fraction", "train.seq_length")


@dataclass(frozen=True)
class Job:
    """Where this job runs: the launch directory and, in a sweep, its place in it."""

    base_dir: Path
    output_dir: Path
    multirun: bool
    sweep_dir: Path | None
    job_num: int | None
    name: str | None  # in a sweep, the job's swept values: "h=8 lr=0.1"

    @classmethod
    def from_hydra(cls) -> Job:
        hc = HydraConfig.get()
        base = Path(hc.runtime.cwd)
        multirun = hc.mode == RunMode.MULTIRUN
        sweep_dir = (base / hc.sweep.dir).resolve() if multirun else None
        return cls(base, Path(hc.runtime.output_dir), multirun, sweep_dir,
                   hc.job.num if multirun else None,
                   job_label(sweep_dir, list(hc.overrides.task)) if multirun else None)


class JobFailed(Exception):
    """Training could not run or ended FAILED; the message is the one-line reason."""


class JobKilled(Exception):
    """SIGINT/SIGTERM stopped training; a checkpoint was saved and the run ended KILLED."""


def _int(cfg: DictConfig, key: str, allow_none: bool = False) -> int | None:
    return _typed(cfg, key, int, allow_none)


def _float(cfg: DictConfig, key: str, allow_none: bool = False) -> float | None:
    return _typed(cfg, key, float, allow_none)


def _typed(cfg: DictConfig, key: str, kind: type, allow_none: bool):
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return kind(value)


def engine_configs(cfg: DictConfig, vocab_size: int) -> tuple[ModelConfig, TrainConfig, OptimConfig]:
    """The public config keys mapped onto the engine's dataclasses (which validate them)."""
    t = cfg.train
    model = ModelConfig(cell=str(cfg.model.cell), vocab_size=vocab_size,
                        hidden_size=_int(cfg, "model.hidden_size"),
                        num_layers=_int(cfg, "model.num_layers"), dtype=str(t.dtype))
    train = TrainConfig(
        seq_length=_int(cfg, "train.seq_length"), batch_size=_int(cfg, "train.batch_size"),
        max_iters=_int(cfg, "train.max_iters", True), max_seconds=_float(cfg, "train.max_seconds", True),
        target_val_loss=_float(cfg, "train.target_val_loss", True), seed=_int(cfg, "train.seed"),
        log_every=_int(cfg, "train.log_every"), eval_every=_int(cfg, "train.eval_every", True),
        eval_max_fraction=_float(cfg, "train.eval_max_fraction"),
        eval_max_chars=_int(cfg, "train.eval_max_chars", True),
        sample_every=_int(cfg, "train.sample_every", True), sample_length=_int(cfg, "train.sample_length"),
    )
    optim = OptimConfig(name=str(cfg.optim.name), lr=_float(cfg, "optim.lr"),
                        clip=_float(cfg, "optim.clip", True), clip_mode=str(cfg.optim.clip_mode))
    return model, train, optim


def build_trainer(cfg: DictConfig, checkpoint_dir: Path, resume_from: Path | None = None):
    """Load the data and build the trainer; every bad input raises a CharRNNError here."""
    corpus = load_corpus(str(cfg.data.name), cfg.data.path)
    # split_train_val rejects a seq_length below 1 or longer than the text, with the numbers involved
    train_text, val_text = split_train_val(corpus.text, _float(cfg, "train.val_fraction"),
                                           _int(cfg, "train.seq_length"))
    vocab = Vocab.from_text(corpus.text)
    model, train, optim = engine_configs(cfg, vocab.size)
    if resume_from is not None:
        return corpus, Trainer.from_checkpoint(resume_from, train_text, val_text, checkpoint_dir, train)
    params = load_initial_weights(cfg.train.init_from, model, vocab) if cfg.train.init_from else None
    # checkpoints name their text, so charrnn-analyze checkpoint=... finds the same validation split
    source = {key: OmegaConf.select(cfg, key) for key in DATA_KEYS}
    if source["data.path"] is not None:
        source["data.path"] = str(Path(source["data.path"]).resolve())
    return corpus, Trainer(model, train, optim, vocab, train_text, val_text, checkpoint_dir, params, source)


@contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGINT/SIGTERM ask the trainer to stop; it saves a checkpoint and the run ends KILLED."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = {}

    def handler(signum, frame):
        trainer.request_stop(f"received {signal.Signals(signum).name}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _resolved(cfg: DictConfig) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


def open_run(cfg: DictConfig, job: Job, store: tracking.Store):
    """Start this job's MLflow run, or reopen the run named by train.resume.

    Returns (config, tracker, checkpoint to resume from or None). A resumed run keeps the config
    it was started with; only tracking.* and train.resume come from this command line.
    """
    if cfg.train.resume:
        run_id = str(cfg.train.resume)
        tracker = tracking.MlflowTracker.reopen(store, run_id)
        into = job.output_dir / "resume"
        into.mkdir(parents=True, exist_ok=True)
        saved = OmegaConf.load(tracker.download(tracking.CONFIG_ARTIFACT, into))
        saved.tracking = cfg.tracking
        saved.train.resume = run_id
        return saved, tracker, Path(tracker.download(tracking.LATEST_CHECKPOINT, into))
    parent = tracking.read_parent(job.sweep_dir) if job.sweep_dir else None
    if parent is not None:
        experiment_id, parent_run_id = parent["experiment_id"], parent["run_id"]
    else:
        experiment_id, parent_run_id = store.ensure_experiment(str(cfg.tracking.experiment)), None
    tags = {tracking.TAG_SWEEP: str(job.sweep_dir), tracking.TAG_JOB: str(job.job_num)} if job.multirun else {}
    tracker = tracking.MlflowTracker.start(store, experiment_id, run_name=job.name,
                                           parent_run_id=parent_run_id, tags=tags)
    tracker.log_config(_resolved(cfg), OmegaConf.to_yaml(cfg, resolve=True))
    return cfg, tracker, None


def train_job(cfg: DictConfig, job: Job) -> tuple[str, float]:
    """Run one tracked job; returns (run id, validation loss). Raises JobFailed after ending the
    run FAILED on bad input or divergence, and JobKilled after ending it KILLED."""
    store = tracking.Store.resolve(cfg.tracking.uri, job.base_dir)
    cfg, tracker, resume_from = open_run(cfg, job, store)
    try:
        corpus, trainer = build_trainer(cfg, job.output_dir / "checkpoints", resume_from)
        if resume_from is None:
            tracker.log_dataset(corpus.name, corpus.source, corpus.sha256, len(corpus.text))
        progress = ProgressCallback(trainer.train_config.max_iters)
        with stop_on_signals(trainer):
            result = trainer.run([tracker, progress])
        tracker.upload_checkpoints()
        if result.status == "finished":  # analysis hook: record the hidden state on the validation slice
            record_finished_run(trainer.params, trainer.model_config, trainer.vocab, trainer.val_ix,
                                len(trainer.train_ix), cfg.get("record"), job.output_dir / ARTIFACT_DIR,
                                lambda folder: tracker.client.log_artifacts(tracker.run_id, str(folder), ARTIFACT_DIR),
                                trainer.elapsed_seconds)
    except CharRNNError as err:
        tracker.finish("FAILED", str(err))
        raise JobFailed(str(err)) from None
    except BaseException as err:  # a bug or an interrupt outside the loop: never leave it RUNNING
        tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED",
                       f"{type(err).__name__}: {err}")
        raise
    status = RUN_STATUS.get(result.status, "FAILED")
    tracker.finish(status, result.reason or "", engine_status=result.status)
    if status == "FAILED":
        raise JobFailed(f"run {tracker.run_id} {result.status}: {result.reason}")
    if status == "KILLED":
        raise JobKilled(f"run {tracker.run_id} {result.reason}; checkpoint saved, "
                        f"continue it with train.resume={tracker.run_id}")
    sample = trainer.sample()
    tracker.client.log_text(tracker.run_id, sample, "samples/final.txt")
    if not job.multirun:
        val = ("none (no validation text)" if result.val_loss is None else
               f"{result.val_loss:.4f} nats/char ({result.val_loss / math.log(2):.4f} bits/char)")
        print(f"\nrun id:    {tracker.run_id}\n"
              f"val loss:  {val} after {result.iteration} iterations ({result.reason})\n"
              f"training:  {result.train_seconds / result.elapsed_seconds:.1%} of the run's {result.elapsed_seconds:.1f} s in training steps\n"
              f"sample:\n----\n{sample}\n----\n"
              f"see it:    {store.ui_command()}", flush=True)
    return tracker.run_id, result.val_loss


def one_line(err: Exception) -> str:
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} must be set, e.g. {err.full_key}=..."
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    key = getattr(err, "full_key", None)
    return f"{key}: {text}" if key else text


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


@hydra.main(version_base="1.3", config_path="pkg://charrnn_conf", config_name="config")
def app(cfg: DictConfig) -> float:
    """The Hydra task: returns the validation loss, the objective a sweeper minimises."""
    job = Job.from_hydra()
    try:
        return train_job(cfg, job)[1]
    except (JobFailed, CharRNNError, MlflowException, OmegaConfBaseException) as err:
        fail(one_line(err))
        if job.multirun:
            return FAILED_OBJECTIVE  # one failed job must not stop the sweep
        sys.exit(2)
    except (JobKilled, KeyboardInterrupt) as err:
        print(f"stopped: {err}", file=sys.stderr, flush=True)
        if job.multirun:
            return FAILED_OBJECTIVE
        sys.exit(130)
    except Exception:
        if not job.multirun:
            raise
        log.error("job %s failed:\n%s", job.job_num, traceback.format_exc())
        return FAILED_OBJECTIVE


def main() -> None:
    app()
