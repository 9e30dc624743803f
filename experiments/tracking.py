"""MLflow side of the harness: a run's tags and artifacts, and :class:`MlflowTracker`, the engine Callback that
logs into it. The engine knows nothing of MLflow. The store lives in :mod:`.store`, the run's lease (who writes
it, whether that writer lives) in :mod:`.lease`, and the queue that delivers its updates in :mod:`.outbox`.

A run's life:

- **Created** by :meth:`MlflowTracker.start` (charrnn-train, or the sweep callback for a sweep's parent run): the
  store is probed first (:meth:`Store.client`, one line within seconds when it does not answer), the run is created
  with its tags: source and host, its owner and first heartbeat (:func:`lease.lease_tags`), the parent run of a
  sweep's job (read from the sweep folder's ``mlflow_parent.json``, :func:`read_parent`). Its config becomes params
  and ``config.yaml``, its corpus a dataset input with the text's sha256.
- **Leased**: the owner tag names the process writing the run; while the sender reaches the store it refreshes
  the heartbeat tag. Another command takes a RUNNING run as alive while that process answers (same machine) or its
  heartbeat is under STALE_SECONDS old (elsewhere), and refuses to resume or end it meanwhile.
- **Fed** through the Callback hooks: metric points, samples and checkpoints go into the run's
  :class:`~.outbox.Outbox`, whose thread delivers them in order; training never waits for the store. A file that
  can never be stored (a full disk) fails the run at the next report; a store that is away only delays delivery.
- **Ended** by :meth:`MlflowTracker.finish`: everything queued is delivered (waiting up to END_WAIT_SECONDS for an
  absent store), the stop tags and reason are written, and the run is set FINISHED, FAILED or KILLED. A store
  that never comes back leaves the run RUNNING, with one line that says how to continue it.
- **Resumed** by ``train.resume=<run id>``: charrnn-train checks the run (ended, or its writer gone), claims it
  (:func:`lease.claim`: a param named after the previous owner, which only one resume can write), sets it RUNNING
  under a new owner, and continues from its last stored checkpoint, logging only the steps the store lacks.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_commit
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from charrnn.train import METRIC_BEST_VAL_LOSS, Callback
from charrnn_experiments.lease import lease_tags
from charrnn_experiments.outbox import Outbox
from charrnn_experiments.store import Store, StoreWriteError, TrackingError

# Tag names, shared with the sweep callback and read back by the analysis tools.
TAG_SWEEP = "charrnn.sweep"  # sweep directory of a multirun job
TAG_JOB = "charrnn.job"  # Hydra job number inside the sweep
TAG_STATUS = "charrnn.status"  # the engine's stop status (finished, diverged, ...)
TAG_STOP = "charrnn.stop"  # why the engine stopped: a charrnn.train.StopReason value
TAG_SIGNAL = "charrnn.signal"  # the signal that stopped a KILLED run (SIGINT, SIGTERM)
TAG_REASON = "charrnn.reason"  # why the run stopped or failed, one line
TAG_DATASET_SHA = "charrnn.dataset.sha256"
TAG_DATASET_VERSION = "charrnn.dataset.version"  # a versioned corpus's version (pystdlib-v1)
TAG_DATASET_DIFFERS = "charrnn.dataset.differs"  # why this text is not that version's reference text
TAG_BEST_CHILD = "charrnn.best_child_run_id"
TAG_PARENT = MLFLOW_PARENT_RUN_ID
# The model's parameter count, logged once at step 0: a study's table sets cells against it (a metric, not a
# param, because it is no config key and would read as a swept param).
METRIC_NUM_PARAMS = "model/num_params"
PARENT_FILE = "mlflow_parent.json"  # in the sweep dir: the parent run every job nests under

CHECKPOINTS = "checkpoints"  # artifact folder of the engine's latest.npz and best.npz
LATEST_CHECKPOINT = f"{CHECKPOINTS}/latest.npz"
BEST_CHECKPOINT = f"{CHECKPOINTS}/best.npz"
CONFIG_ARTIFACT = "config.yaml"


def children_filter(parent_id: str, *conditions: str) -> str:
    """The search_runs filter string of a sweep parent's child runs, narrowed by each of ``conditions`` (more
    clauses of MLflow's search syntax, such as ``attributes.status = 'RUNNING'``)."""
    return " and ".join([f"tags.`{TAG_PARENT}` = '{parent_id}'", *conditions])


def best_val_loss(run) -> float | None:
    """A run's best validation loss: its latest logged ``val/best_loss`` (the engine's lowest val/loss so far,
    carried across a resume); None for a run that never evaluated. The one reader of "best" in every app."""
    return run.data.metrics.get(METRIC_BEST_VAL_LOSS)


def write_parent(sweep_dir: Path, store: Store, experiment_id: str, run_id: str) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"tracking_uri": store.uri, "experiment_id": experiment_id, "run_id": run_id}
    (sweep_dir / PARENT_FILE).write_text(json.dumps(record))


def read_parent(sweep_dir: Path) -> dict[str, str] | None:
    path = sweep_dir / PARENT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the config as MLflow params."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    # log_batch sends them in requests of MLflow's size limit (100 params)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])


def source_tags() -> dict[str, str]:
    """MLflow's own tags of where a run comes from (mlflow.user, mlflow.source.name and .type, and git's when the
    main script is in a checkout), with the harness's commit when it runs from a checkout: a console script in a
    virtual environment is in none, or in an ignored folder, so MLflow finds no commit there."""
    tags = resolve_tags()
    commit = tags.get(MLFLOW_GIT_COMMIT) or get_git_commit(str(Path(__file__).resolve()))
    return {**tags, MLFLOW_GIT_COMMIT: commit} if commit else tags


class MlflowTracker(Callback):
    """One MLflow run: params, tags and dataset at start, then metrics, samples and checkpoints as they
    come, delivered in order by its :class:`~.outbox.Outbox` (see the module docstring)."""

    def __init__(
        self, client: MlflowClient, run_id: str, store_uri: str = "", logged_through: dict[str, int] | None = None
    ) -> None:
        """``logged_through``: per metric, the last step the store already has (a resumed run recomputes
        those steps exactly, and each step keeps one point). Files are queued once ``outbox.folder`` is set: a
        folder of this run's own for their private copies."""
        self.client = client
        self.run_id = run_id
        self.outbox = Outbox(client, run_id, store_uri)
        self._logged_through = dict(logged_through or {})

    @classmethod
    def start(
        cls,
        store: Store,
        experiment_id: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        client: MlflowClient | None = None,
    ) -> MlflowTracker:
        client = client or store.client()
        all_tags = {**source_tags(), "host": socket.gethostname(), **lease_tags(), **(tags or {})}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id, store_uri=store.uri)

    # --- what is known before training -------------------------------------------------

    def log_config(self, config: dict, yaml_text: str) -> None:
        # a null key is no param: MLflow would show the string "None" (config.yaml keeps every key)
        log_params(self.client, self.run_id, {k: v for k, v in flatten(config).items() if v is not None})
        self.client.log_text(self.run_id, yaml_text, CONFIG_ARTIFACT)

    def log_dataset(
        self, name: str, source: str, sha256: str, n_chars: int, version: str | None = None, differs: str | None = None
    ) -> None:
        """The training text as an MLflow dataset input, and tags with its sha256 and, for a versioned corpus,
        its version and why the text differs from that version's reference text (so runs on different texts
        are never compared unawares)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        described = {"corpus": name, "source": source, "chars": str(n_chars)}
        if version:
            described["version"] = version
        dataset = MetaDataset(CodeDatasetSource(described), name=name, digest=sha256[:16])
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
        # Parallel jobs of a sweep log the same dataset: the store inserts its row only when it is missing,
        # so one job can lose that race on the unique (experiment, name, digest) key. The row exists then,
        # and linking it again succeeds. MLflow's database stores report that refusal as BAD_REQUEST (any
        # SQLAlchemy error, in the driver's own words), a tracking server passes that code on or says
        # INTERNAL_ERROR: those codes are tried again, and a real fault fails the same way three times.
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=[entity])
                break
            except MlflowException as err:
                if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "INTERNAL_ERROR") or attempt == 2:
                    raise
                time.sleep(0.1)
        tags = {TAG_DATASET_SHA: sha256, TAG_DATASET_VERSION: version, TAG_DATASET_DIFFERS: differs}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items() if v])

    def log_num_params(self, num_params: int) -> None:
        """The model's parameter count, as a metric at step 0: comparison tables read it without a checkpoint."""
        self.client.log_metric(self.run_id, METRIC_NUM_PARAMS, num_params, step=0)

    # --- engine Callback: queue, never wait for the store -----------------------------------

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.outbox.put_metrics(
            [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self._logged_through.get(k, -1)]
        )

    def on_sample(self, text: str, step: int) -> None:
        self.queue_text(text, f"samples/iter_{step:08d}.txt")

    def on_checkpoint(self, path: str, step: int, is_best: bool) -> None:
        # the engine replaces the file at its next save: what reaches the store must be this step's checkpoint,
        # queued behind this step's metrics
        self.outbox.put_file(Path(path), CHECKPOINTS)

    def queue_text(self, text: str, artifact_path: str) -> None:
        folder, name = artifact_path.rsplit("/", 1)
        self.outbox.put_text(text, folder, name)

    def queue_folder(self, folder: Path, artifact_path: str) -> None:
        """Every file under ``folder`` into ``artifact_path``, delivered like checkpoints (a store that is
        away at this moment gets them when it is back)."""
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            relative = path.parent.relative_to(folder).as_posix()
            self.outbox.put_file(path, artifact_path if relative == "." else f"{artifact_path}/{relative}")

    # --- the end --------------------------------------------------------------------------

    def finish(
        self, status: str, reason: str = "", tags: dict[str, str] | None = None, give_up: threading.Event | None = None
    ) -> None:
        """Deliver everything queued, then end the run: FINISHED, FAILED or KILLED. A file that could never be
        stored fails a run that would have ended otherwise, and raises StoreWriteError once the run has ended.
        Raises TrackingError, the run left RUNNING, when the store never took everything."""
        left = self.outbox.drain(give_up)
        if left is not None:
            raise TrackingError(self._left_running(*left))
        if self.outbox.folder is not None:
            shutil.rmtree(self.outbox.folder, ignore_errors=True)  # every queued copy is in the store now
        failure = self.outbox.failure
        failed_here = failure is not None and status != "FAILED"
        if failed_here:
            status, reason = "FAILED", failure
        tags = {**(tags or {}), **({TAG_REASON: reason[:5000]} if reason else {})}
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.client.set_terminated(self.run_id, status=status)
        if failed_here:
            raise StoreWriteError(failure)

    def _left_running(self, cause: str, once: str) -> str:
        """One line: why the run could not be ended in its store, and the two ways to continue it."""
        return (
            f"{cause}: run {self.run_id} keeps status RUNNING there and lacks {self.outbox.waiting()}; once "
            f"{once}, continue from its last stored checkpoint with train.resume={self.run_id} (every metric "
            f"point) or from here with train.resume={self._local_checkpoint()}"
        )

    def _local_checkpoint(self) -> str:
        folder = self.outbox.folder.parent if self.outbox.folder else Path("<the run's folder>")
        return str(folder / "checkpoints" / Path(LATEST_CHECKPOINT).name)
