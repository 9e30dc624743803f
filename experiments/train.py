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
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import hydra

# Importing it registers hydra/launcher=charrnn before the config is composed, also in an editable install
# (pip install -e), whose hydra_plugins folder Hydra's plugin scan does not see.
import hydra_plugins.charrnn_launcher.config  # noqa: F401
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from charrnn.allocator import keep_freed_memory
from charrnn.checkpoint import load_checkpoint, load_initial_weights
from charrnn.data import Corpus, Vocab, load_corpus, split_corpus
from charrnn.errors import CharRNNError, CheckpointError, ConfigError
from charrnn.model import ModelConfig, count_params
from charrnn.schedule import ScheduleConfig
from charrnn.train import Callback, OptimConfig, TrainConfig, Trainer, TrainResult
from charrnn_analysis.sources import DATA_KEYS, DATA_PATH
from charrnn_analysis.trained_run import ARTIFACT_DIR, FinishedRunRecorder, RecordSettings
from charrnn_experiments import tracking
from charrnn_experiments.faults import describe_fault, first_line, local_fault, say_error
from charrnn_experiments.lease import claim, owner_alive
from charrnn_experiments.progress import ProgressCallback
from charrnn_experiments.schema import TrainAppSchema, run_reporting_config_errors
from charrnn_experiments.store import Store, use_http_defaults
from charrnn_experiments.sweep_jobs import TAG_BLAS_THREADS, job_label, sweep_blas_threads
from charrnn_experiments.sweep_stop import stop_serial_sweep

log = logging.getLogger("charrnn")

# The engine's stop status -> the MLflow run status.
RUN_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "diverged": "FAILED"}
FAILED_OBJECTIVE = math.inf  # what a failed sweep job reports to the sweeper
STOP_LIMITS = ("train.max_iters", "train.max_seconds", "train.target_val_loss")  # a resume may change these
TAG_STOP_LIMITS = "charrnn.resume.stop_limits"  # the stop limits a resume changed, as "key=now (was ...)"
RUN_ID_KEY = "run_id"  # in a checkpoint's metadata: the run it belongs to


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
        return cls(
            base,
            Path(hc.runtime.output_dir),
            multirun,
            sweep_dir,
            hc.job.num if multirun else None,
            job_label(sweep_dir, list(hc.overrides.task)) if multirun else None,
        )


class JobFailed(Exception):
    """Training could not run or ended FAILED; the message is the one-line reason."""


class JobKilled(Exception):
    """SIGINT/SIGTERM stopped training; a checkpoint was saved and the run ended KILLED."""


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


class Stopper(Callback):
    """SIGINT/SIGTERM for the whole command, installed before any run exists.

    Before training, a signal interrupts what is under way (KeyboardInterrupt), and the code that ends the
    run ends it KILLED; while the store creates the run, it waits until the run id is known. During
    training it asks the trainer to stop (a checkpoint is saved, the run ends KILLED); as a callback of the
    trainer, it interrupts again from the end of training on (the callbacks after it: a long recording). While
    the run's record is being ended it never interrupts: it only gives up waiting for a store that is away.
    """

    def __init__(self, exits_after: bool) -> None:
        """``exits_after``: the process ends with this job (not a sweep's worker), so once the job has
        ended, signals are ignored until the exit status is out."""
        self.exits_after = exits_after
        self.reason: str | None = None
        self.signum: int | None = None  # the first signal received
        self.trainer: Trainer | None = None
        self.give_up = threading.Event()
        self._shielded = 0
        self._ending = False

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            settled = self._shielded > 0 and self.exits_after
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_IGN if settled else old)

    def _handle(self, signum, frame) -> None:
        reason = f"received {signal.Signals(signum).name}"
        self.reason = self.reason or reason
        self.signum = self.signum or signum
        if self._ending:
            if not self.give_up.is_set():
                print(f"{reason}: ending the run's record in the store first", file=sys.stderr, flush=True)
            self.give_up.set()
        elif self.trainer is not None:
            self.trainer.request_stop(self.reason)
        elif not self._shielded:
            raise KeyboardInterrupt(reason)

    @contextmanager
    def shielded(self):
        """A signal that arrives in here takes effect at raise_if_stopped()."""
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1

    def settle(self) -> None:
        """From now on a signal is only noted."""
        self._shielded += 1

    def raise_if_stopped(self) -> None:
        if self.reason is not None and self.trainer is None:
            raise KeyboardInterrupt(self.reason)

    def on_train_end(self, result: TrainResult) -> None:
        self.trainer = None
        if result.status == "finished":  # a signal at the very end stops what follows a finished training
            self.raise_if_stopped()

    def end_run(
        self, tracker: tracking.MlflowTracker, status: str, reason: str, result: TrainResult | None = None
    ) -> None:
        tags = {tracking.TAG_STATUS: result.status, tracking.TAG_STOP: result.stop.value} if result else {}
        if status == "KILLED" and self.signum is not None:
            tags[tracking.TAG_SIGNAL] = signal.Signals(self.signum).name
        self._ending = True
        try:
            tracker.finish(status, reason, tags, give_up=self.give_up)
        finally:
            self._ending = False


def _resolved(cfg: DictConfig) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


@dataclass
class Resume:
    """What a resume found in the store, checked before the run is claimed."""

    run_id: str
    checkpoint: Path  # the store's latest.npz, or the local file train.resume named
    corpus: Corpus
    changes: dict[str, tuple[object, object]]  # stop limit -> (was, now)
    logged_through: dict[str, int]  # per metric, the last step the store has
    from_file: bool = False  # train.resume named a local checkpoint


def refuse(run_id: str, why: str) -> JobFailed:
    return JobFailed(f"cannot resume run {run_id}: {why}")


def resume_target(value: str) -> tuple[str, Path | None]:
    """``train.resume``'s run id, and the local checkpoint to continue from when it names a ``.npz`` file (a run
    whose process died while the store was away has a newer checkpoint in its folder than in the store)."""
    if not value.strip():  # `train.resume=` with nothing after it must not start a new run on the defaults
        raise JobFailed(
            "train.resume is empty: give the run id (or the local .npz checkpoint) of the run to "
            "continue, or leave train.resume out to start a new run"
        )
    if not value.endswith(".npz"):
        return value, None
    path = Path(value)
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as err:
        raise JobFailed(f"train.resume={value}: {err}") from None
    run_id = checkpoint.metadata.get(RUN_ID_KEY)
    if not run_id:
        raise JobFailed(
            f"train.resume={value}: the checkpoint does not name its run (it predates charrnn-train "
            f"writing that into checkpoints); resume by run id: train.resume=<run id>"
        )
    return str(run_id), path


def prepare_resume(
    cfg: DictConfig, client, output_dir: Path, run_id: str, local: Path | None
) -> tuple[DictConfig, Resume]:
    """Check that run ``run_id`` (train.resume's, see :func:`resume_target`) can continue, without changing it in
    the store.

    Returns the run's own config (with any new stop limits) and what the resume needs.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        named = f"{local}: its run {run_id} is not" if local else f"{run_id}: no such run"
        raise JobFailed(f"train.resume={named} in this tracking store") from None
    tags = run.data.tags
    if tracking.TAG_SWEEP in tags and tracking.TAG_JOB not in tags:
        raise refuse(run_id, "it is a sweep's parent run; resume one of its child runs")
    alive = owner_alive(run)
    if alive:
        raise refuse(run_id, f"it is RUNNING ({alive}); stop that first")
    stored = {a.path for a in client.list_artifacts(run_id, tracking.CHECKPOINTS)}
    if local is None and tracking.LATEST_CHECKPOINT not in stored:
        raise refuse(run_id, f"it has no checkpoint in the store (status {run.info.status}); start a new run instead")
    into = output_dir / run_id / "resume"
    into.mkdir(parents=True, exist_ok=True)
    saved = OmegaConf.load(client.download_artifacts(run_id, tracking.CONFIG_ARTIFACT, str(into)))
    changes = {}
    for key in resume_overrides():
        was, now = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if was != now:
            changes[key] = (was, now)
            OmegaConf.update(saved, key, now)
    saved.tracking = cfg.tracking
    saved.train.resume = run_id
    corpus = load_corpus(str(saved.data.name), saved.data.path)
    trained_on = tags.get(tracking.TAG_DATASET_SHA)
    if trained_on and trained_on != corpus.sha256:
        raise refuse(
            run_id,
            f"its data changed: {corpus.source} has sha256 {corpus.sha256[:12]}..., the run "
            f"was trained on {trained_on[:12]}...; restore that text or start a new run",
        )
    if local is not None:
        return saved, Resume(run_id, local, corpus, changes, logged_through(client, run), from_file=True)
    checkpoint = Path(client.download_artifacts(run_id, tracking.LATEST_CHECKPOINT, str(into)))
    try:
        load_checkpoint(checkpoint)
    except CheckpointError as err:
        # a process killed while uploading leaves a truncated file; best.npz, an earlier evaluation's full
        # state, continues exactly as well (the steps the store has already are not logged again)
        if tracking.BEST_CHECKPOINT not in stored:
            raise refuse(run_id, f"its stored latest checkpoint is unreadable ({err})") from None
        print(
            f"note: run {run_id}'s stored latest.npz is unreadable; resuming from its best.npz",
            file=sys.stderr,
            flush=True,
        )
        checkpoint = Path(client.download_artifacts(run_id, tracking.BEST_CHECKPOINT, str(into)))
    return saved, Resume(run_id, checkpoint, corpus, changes, logged_through(client, run))


def logged_through(client, run) -> dict[str, int]:
    """Per metric, the last step the store has: a resume does not log those steps again."""
    return {key: max(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


def resume_overrides() -> list[str]:
    """The stop limits given on this command line; any other change to the run's config is refused."""
    limits, refused = [], []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in STOP_LIMITS:
            limits.append(key)
        elif key != "train.resume" and not key.startswith(("tracking.", "hydra.", "hydra/")):
            refused.append(override)
    if refused:
        raise ConfigError(
            f"train.resume continues a run with its own config; only the stop limits "
            f"{', '.join(STOP_LIMITS)} may change, not {', '.join(refused)}"
        )
    return limits


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
        first_line(err) if interrupted else f"{type(err).__name__}: {err}",
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


def say_resumed(tracker: tracking.MlflowTracker, cfg: DictConfig, trainer: Trainer, resume: Resume) -> None:
    """Print where the run continues; new stop limits also go into the run's config.yaml and a tag
    (MLflow params cannot change, so the params keep the values the run started with)."""
    changed = ", ".join(f"{key}={now} (was {was})" for key, (was, now) in resume.changes.items())
    print(
        f"resuming run {resume.run_id} at iteration {trainer.iteration}"
        + (f" from {resume.checkpoint}" if resume.from_file else "")
        + (f" with {changed}" if changed else ""),
        file=sys.stderr,
        flush=True,
    )
    stored_through = resume.logged_through.get("train/loss", 0)
    if resume.from_file and stored_through + trainer.train_config.log_every <= trainer.iteration:
        # the dead process logged these, but never delivered them; only a resume from an earlier checkpoint
        # (train.resume=<run id>) computes them again
        print(
            f"note: the store has train/loss through step {stored_through}: the points of steps "
            f"{stored_through + 1}..{trainer.iteration} were never delivered and stay missing",
            file=sys.stderr,
            flush=True,
        )
    if changed:
        tracker.client.log_text(tracker.run_id, OmegaConf.to_yaml(cfg, resolve=True), tracking.CONFIG_ARTIFACT)
        tracker.client.set_tag(tracker.run_id, TAG_STOP_LIMITS, changed)


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
        return report(err, job)


def report(err: BaseException, job: Job) -> float:
    """One line for what stopped the job, then its exit status (or, in a sweep, its objective)."""
    if isinstance(err, (JobFailed, CharRNNError, MlflowException, OmegaConfBaseException)):
        say_error(one_line(err))
        code = 2
    elif isinstance(err, (JobKilled, KeyboardInterrupt)):
        print(f"stopped: {first_line(err) if str(err) else 'interrupted'}", file=sys.stderr, flush=True)
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
