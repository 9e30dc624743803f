"""`charrnn-train`: the Hydra app. Config -> engine -> MLflow, nothing more.

With no overrides it runs the main job (the gist's model on the offline `pystdlib` corpus for two
minutes) and prints the run id, the validation loss, a sample and the `mlflow ui` command.
`-m` sweeps; every job of a sweep is a child run nested under the sweep's parent run.
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import sys
import traceback
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import hydra

# Importing it registers hydra/launcher=charrnn before the config is composed, also in an editable install
# (pip install -e), whose hydra_plugins folder Hydra's plugin scan does not see.
import hydra_plugins.charrnn_launcher.config  # noqa: F401
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from charrnn.allocator import keep_freed_memory
from charrnn.checkpoint import load_initial_weights
from charrnn.corpora import Corpus, load_corpus
from charrnn.data import Vocab, split_corpus
from charrnn.errors import CharRNNError, ConfigError
from charrnn.model import ModelConfig, count_params
from charrnn.schedule import ScheduleConfig
from charrnn.train import OptimConfig, TrainConfig, Trainer, TrainResult
from charrnn_analysis.sources import DATA_KEYS, DATA_PATH
from charrnn_analysis.trained_run import ARTIFACT_DIR, FinishedRunRecorder, RecordSettings
from charrnn_experiments import tracking
from charrnn_experiments.faults import describe_fault, first_line, local_fault, say_error
from charrnn_experiments.job import Job, JobFailed, JobKilled
from charrnn_experiments.lease import claim
from charrnn_experiments.progress import ProgressCallback
from charrnn_experiments.resume import RUN_ID_KEY, Resume, prepare_resume, resume_target, say_resumed
from charrnn_experiments.schema import TrainAppSchema, run_reporting_config_errors
from charrnn_experiments.stopper import Stopper
from charrnn_experiments.store import Store, use_http_defaults
from charrnn_experiments.sweep_jobs import TAG_BLAS_THREADS, sweep_blas_threads
from charrnn_experiments.sweep_stop import stop_serial_sweep

log = logging.getLogger("charrnn")

# The engine's stop status -> the MLflow run status.
RUN_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED"}
FAILED_OBJECTIVE = math.inf  # what a failed sweep job reports to the sweeper


def engine_configs(cfg: DictConfig, vocab_size: int) -> tuple[ModelConfig, TrainConfig, OptimConfig]:
    """The engine's dataclasses from the config, whose schema they are; their ``__post_init__`` checks ranges,
    and a value out of range is reported under its key (``optim.lr``, not the engine's ``lr``)."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    train = plain["train"]
    with keys_named("model", ModelConfig, {"dtype": "train.dtype"}):
        model = ModelConfig(**engine_keys(ModelConfig, plain["model"]), vocab_size=vocab_size, dtype=train["dtype"])
    with keys_named("train", TrainConfig):
        train_config = TrainConfig(**engine_keys(TrainConfig, train))
    with optim_keys_named(plain["optim"].get("options")):
        optim = OptimConfig(**engine_keys(OptimConfig, plain["optim"]))
    return model, train_config, optim


def optim_keys_named(options: dict | None):
    """``keys_named`` for the optim section, its options and its schedule."""
    nested = {f"schedule.{f.name}": f"optim.schedule.{f.name}" for f in fields(ScheduleConfig)}
    return keys_named("optim", OptimConfig, {name: f"optim.options.{name}" for name in options or {}} | nested)


@contextmanager
def keys_named(section: str, engine_class: type, elsewhere: dict[str, str] | None = None):
    """An engine ConfigError about a field of ``engine_class`` (or a name in ``elsewhere``) names the config key
    instead."""
    try:
        yield
    except ConfigError as err:
        keys = {f.name: f"{section}.{f.name}" for f in fields(engine_class)} | (elsewhere or {})
        if err.field not in keys:
            raise
        raise err.renamed(keys[err.field]) from None


def engine_keys(engine_class: type, section: dict) -> dict:
    """The keys of a config section that are fields of ``engine_class`` (train.* also holds harness keys; a
    resumed run's stored config may predate a field, which then keeps the engine's default)."""
    names = {f.name for f in fields(engine_class)}
    return {key: value for key, value in section.items() if key in names}


def build_trainer(
    cfg: DictConfig,
    checkpoint_dir: Path,
    resume_from: Path | None = None,
    corpus: Corpus | None = None,
    run_id: str | None = None,
):
    """Load the data (unless given) and build the trainer; every bad input raises a CharRNNError here.
    ``run_id`` goes into every checkpoint, so ``train.resume=<file>`` knows which run a file continues."""
    if cfg.get("record") is not None and cfg.record.enabled:
        RecordSettings.from_config(cfg.record)  # a bad record.* key fails now, not after the training it follows
    corpus = corpus or load_corpus(str(cfg.data.name), cfg.data.path)
    # split_corpus rejects a seq_length below 1 or longer than the text, with the numbers involved
    train_text, val_text = split_corpus(corpus, cfg.train.val_fraction, cfg.train.seq_length)
    vocab = Vocab.from_text(corpus.text)
    model, train, optim = engine_configs(cfg, vocab.size)
    # the trainer checks the settings that depend on each other or on the data (warmup against max_iters,
    # patience against a validation text)
    with keys_named("train", TrainConfig), optim_keys_named(optim.options):
        if resume_from is not None:
            return corpus, Trainer.from_checkpoint(resume_from, train_text, val_text, checkpoint_dir, train)
        params = load_initial_weights(cfg.train.init_from, model, vocab) if cfg.train.init_from else None
        # checkpoints name their text, so charrnn-analyze checkpoint=... finds the same validation split
        source = {key: OmegaConf.select(cfg, key) for key in DATA_KEYS}
        if source[DATA_PATH] is not None:
            source[DATA_PATH] = str(Path(source[DATA_PATH]).resolve())
        source[RUN_ID_KEY] = run_id
        return corpus, Trainer(model, train, optim, vocab, train_text, val_text, checkpoint_dir, params, source)


def _resolved(cfg: DictConfig) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


def train_job(cfg: DictConfig, job: Job, stopper: Stopper) -> tuple[str, float]:
    """Run one tracked job; returns (run id, validation loss). Raises JobFailed after ending the
    run FAILED on bad input or divergence, and JobKilled after ending it KILLED.

    Nothing that can fail runs between creating (or claiming) the run and the code that ends it.
    """
    store = Store.resolve(cfg.tracking.uri, job.base_dir)
    # a bad file or an empty value: before the store
    target = resume_target(str(cfg.train.resume)) if cfg.train.resume is not None else None
    client = store.client()
    store.check_writable()
    if target:
        cfg, resume = prepare_resume(cfg, client, job.output_dir, *target)
        tracker = claim_run(store, client, resume, job, stopper)
    else:
        resume, config = None, (_resolved(cfg), OmegaConf.to_yaml(cfg, resolve=True))  # can fail: not in a run
        tracker = start_run(store, client, cfg, job, stopper)
    # every run has its own folder, even when two start in the same second in Hydra's output folder
    run_dir = tracker.outbox.folder.parent
    try:
        stopper.raise_if_stopped()
        trainer = (
            new_trainer(cfg, tracker, stopper, config, run_dir)
            if resume is None
            else resumed_trainer(cfg, tracker, stopper, resume, run_dir)
        )
        stopper.raise_if_stopped()
        result, sample = run_training(cfg, trainer, tracker, stopper, run_dir)
    except BaseException as err:  # never leave the run RUNNING
        failed = end_stopped_run(err, tracker, stopper, run_dir)
        if failed is None:
            raise
        raise failed from None
    status = RUN_STATUS.get(result.status, "FAILED")
    stopper.end_run(tracker, status, result.reason or "", result)
    if status == "FAILED":
        raise JobFailed(f"run {tracker.run_id} {result.status}: {result.reason}")
    if status == "KILLED":
        raise JobKilled(
            f"run {tracker.run_id} {result.reason}; checkpoint saved, continue it with train.resume={tracker.run_id}"
        )
    if not job.multirun:
        print_summary(store, tracker, result, sample)
    return tracker.run_id, result.val_loss


def start_run(store: Store, client, cfg: DictConfig, job: Job, stopper: Stopper) -> tracking.MlflowTracker:
    """Create the job's run: in a sweep, a child of the sweep's parent run."""
    parent = tracking.read_parent(job.sweep_dir) if job.sweep_dir else None
    if parent is not None:
        experiment_id, parent_run_id = parent["experiment_id"], parent["run_id"]
    else:
        experiment_id = store.ensure_experiment(str(cfg.tracking.experiment), client)
        parent_run_id = None
    tags = {tracking.TAG_SWEEP: str(job.sweep_dir), tracking.TAG_JOB: str(job.job_num)} if job.multirun else {}
    if job.sweep_dir and (threads := sweep_blas_threads(job.sweep_dir)) is not None:
        tags[TAG_BLAS_THREADS] = str(threads)
    with stopper.shielded():
        tracker = tracking.MlflowTracker.start(
            store, experiment_id, run_name=job.name, parent_run_id=parent_run_id, tags=tags, client=client
        )
        tracker.outbox.folder = job.output_dir / tracker.run_id / "outbox"
    return tracker


def claim_run(store: Store, client, resume: Resume, job: Job, stopper: Stopper) -> tracking.MlflowTracker:
    """Claim the run a resume continues (prepare_resume has checked it can)."""
    with stopper.shielded():
        claim(client, client.get_run(resume.run_id))
        tracker = tracking.MlflowTracker(
            client, resume.run_id, store_uri=store.uri, logged_through=resume.logged_through
        )
        tracker.outbox.folder = job.output_dir / resume.run_id / "outbox"
    return tracker


# A signal never cuts a store write in half (a SQLite write cut short keeps its lock and the run could not be
# ended): writes are shielded, and the signal takes effect right after them.
def new_trainer(
    cfg: DictConfig, tracker: tracking.MlflowTracker, stopper: Stopper, config: tuple[dict, str], run_dir: Path
) -> Trainer:
    """Log a new run's ``config`` (resolved, and as YAML), build its trainer and log its data and size."""
    with stopper.shielded():
        tracker.log_config(*config)
    stopper.raise_if_stopped()
    corpus, trainer = build_trainer(cfg, run_dir / "checkpoints", run_id=tracker.run_id)
    if corpus.differs:
        print(f"note: {corpus.differs}", file=sys.stderr, flush=True)
    with stopper.shielded():
        tracker.log_dataset(corpus.name, corpus.source, corpus.sha256, len(corpus.text), corpus.version, corpus.differs)
        tracker.log_num_params(count_params(trainer.model_config))
    return trainer


def resumed_trainer(
    cfg: DictConfig, tracker: tracking.MlflowTracker, stopper: Stopper, resume: Resume, run_dir: Path
) -> Trainer:
    """The trainer of a resumed run, from its checkpoint; says where it continues."""
    _, trainer = build_trainer(cfg, run_dir / "checkpoints", resume.checkpoint, resume.corpus)
    with stopper.shielded():
        say_resumed(tracker, cfg, trainer, resume)
    return trainer


def run_training(
    cfg: DictConfig, trainer: Trainer, tracker: tracking.MlflowTracker, stopper: Stopper, run_dir: Path
) -> tuple[TrainResult, str | None]:
    """Train; a finished run's hidden state is recorded and its final model sampled (the sample is None
    otherwise)."""
    stopper.trainer = trainer
    # the recording of the hidden state on the validation slice comes last: a signal stops it (see Stopper)
    recorder = FinishedRunRecorder(
        cfg.get("record"), run_dir / ARTIFACT_DIR, lambda folder: tracker.queue_folder(folder, ARTIFACT_DIR)
    )
    result = trainer.run([tracker, ProgressCallback(trainer.train_config.max_iters), stopper, recorder])
    if result.status != "finished":
        return result, None
    sample = trainer.sample()
    tracker.queue_text(sample, "samples/final.txt")
    return result, sample


def end_stopped_run(
    err: BaseException, tracker: tracking.MlflowTracker, stopper: Stopper, run_dir: Path
) -> JobFailed | None:
    """End the run ``err`` stopped: FAILED, or KILLED by an interrupt. Returns the JobFailed to raise instead
    (bad input, a local fault), or None where ``err`` goes on (an interrupt, a bug)."""
    if isinstance(err, CharRNNError):
        stopper.end_run(tracker, "FAILED", str(err))
        return JobFailed(str(err))
    fault = local_fault(err)
    if fault is not None:  # a full disk or a read-only folder under the run's own files
        fault.filename = fault.filename or str(run_dir)
        # the first cause: an upload the same full disk refused earlier, else this write
        why = tracker.outbox.failure or f"cannot write the run's files: {describe_fault(fault)}"
        stopper.end_run(tracker, "FAILED", why)
        return JobFailed(why)
    interrupted = isinstance(err, KeyboardInterrupt)
    stopper.end_run(
        tracker,
        "KILLED" if interrupted else "FAILED",
        interrupted_by(err, stopper) if interrupted else f"{type(err).__name__}: {err}",
    )
    return None


def print_summary(store: Store, tracker: tracking.MlflowTracker, result: TrainResult, sample: str | None) -> None:
    """A single run's last lines: its id, validation loss, time in training, final sample and UI address."""
    val = (
        "none (no validation text)"
        if result.val_loss is None
        else f"{result.val_loss:.4f} nats/char ({result.val_loss / math.log(2):.4f} bits/char)"
    )
    print(
        f"\nrun id:    {tracker.run_id}\n"
        f"val loss:  {val} after {result.iteration} iterations ({result.reason})\n"
        f"training:  {result.train_seconds / result.elapsed_seconds:.1%} of the run's "
        f"{result.elapsed_seconds:.1f} s in training steps\n"
        f"sample:\n----\n{sample}\n----\n"
        f"see it:    {store.ui_address(tracker.client.get_run(tracker.run_id).info.experiment_id)}",
        flush=True,
    )


def one_line(err: Exception) -> str:
    if isinstance(err, MissingMandatoryValue):
        return f"{err.full_key} must be set, e.g. {err.full_key}=..."
    text = first_line(err)
    key = getattr(err, "full_key", None)
    return f"{key}: {text}" if key else text


@hydra.main(version_base="1.3", config_path="pkg://charrnn_conf", config_name="config")
def app(cfg: DictConfig) -> float:
    """The Hydra task: returns the validation loss, the objective a sweeper minimises."""
    use_http_defaults()  # a job's own entry point too: a job on another machine inherits nothing
    job = Job.from_hydra()
    stopper = Stopper(exits_after=not job.multirun)
    try:
        with stopper.installed():
            return run_app(cfg, job, stopper)
    finally:
        if job.multirun and stopper.signum is not None:
            stop_serial_sweep(stopper.signum)  # a signal this job only noted (its run was ending) stops the sweep


def run_app(cfg: DictConfig, job: Job, stopper: Stopper) -> float:
    try:
        return train_job(cfg, job, stopper)[1]
    except BaseException as err:
        stopper.settle()  # the run has ended: a signal now must not interrupt the report
        return report(err, job, stopper)


def interrupted_by(err: KeyboardInterrupt, stopper: Stopper) -> str:
    """Why an interrupt stopped the job, in the stopper's own words where a signal raised it: Python rewrites an
    interrupt that lands inside a codec ("decoding with 'utf-32-le' codec failed (KeyboardInterrupt: ...)")."""
    return stopper.reason or (first_line(err) if str(err) else "interrupted")


def report(err: BaseException, job: Job, stopper: Stopper) -> float:
    """One line for what stopped the job, then its exit status (or, in a sweep, its objective)."""
    if isinstance(err, (JobFailed, CharRNNError, MlflowException, OmegaConfBaseException)):
        say_error(one_line(err))
        code = 2
    elif isinstance(err, (JobKilled, KeyboardInterrupt)):
        why = interrupted_by(err, stopper) if isinstance(err, KeyboardInterrupt) else first_line(err)
        print(f"stopped: {why}", file=sys.stderr, flush=True)
        code = 130
    elif isinstance(err, Exception) and job.multirun:
        log.error("job %s failed:\n%s", job.job_num, "".join(traceback.format_exception(err)))
        return FAILED_OBJECTIVE
    else:
        raise err
    if job.multirun:
        return FAILED_OBJECTIVE  # one failed job must not stop the sweep
    sys.exit(code)


def main() -> None:
    # The collector's pass over every object at interpreter exit (MLflow's, SQLAlchemy's: over a second, for a
    # single run and a sweep alike) would find nothing worth freeing.
    atexit.register(gc.freeze)
    keep_freed_memory()  # the process trains: see charrnn.allocator (a sweep's own job processes call it too)
    use_http_defaults()  # the sweep's start creates the store before any job
    run_reporting_config_errors(app, TrainAppSchema)
