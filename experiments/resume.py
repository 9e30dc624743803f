"""train.resume: which run continues, from which checkpoint, checked before the run is claimed."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from charrnn.checkpoint import load_checkpoint
from charrnn.corpora import Corpus, load_corpus
from charrnn.errors import CheckpointError, ConfigError
from charrnn.train import Trainer
from charrnn_experiments import tracking
from charrnn_experiments.job import JobFailed
from charrnn_experiments.lease import owner_alive

STOP_LIMITS = ("train.max_iters", "train.max_seconds", "train.target_val_loss")  # a resume may change these
TAG_STOP_LIMITS = "charrnn.resume.stop_limits"  # the stop limits a resume changed, as "key=now (was ...)"
RUN_ID_KEY = "run_id"  # in a checkpoint's metadata: the run it belongs to


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
