"""MLflow side of the harness: where the store is, the run's lifecycle, and a Callback that logs.

The engine knows nothing of MLflow; :class:`MlflowTracker` plugs into its Callback interface.
Metrics go out in batches through MLflow's asynchronous logging (one synchronous ``log_metric``
costs milliseconds on SQLite), so tracking stays a small fraction of a run's wall time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from charrnn.train import Callback

# Tag names, shared with the sweep callback and read back by the analysis tools.
TAG_SWEEP = "charrnn.sweep"              # sweep directory of a multirun job
TAG_JOB = "charrnn.job"                  # Hydra job number inside the sweep
TAG_STATUS = "charrnn.status"            # the engine's stop status (finished, diverged, ...)
TAG_REASON = "charrnn.reason"            # why the run stopped or failed, one line
TAG_DATASET_SHA = "charrnn.dataset.sha256"
TAG_BEST_CHILD = "charrnn.best_child_run_id"
TAG_PARENT = "mlflow.parentRunId"
PARENT_FILE = "mlflow_parent.json"       # in the sweep dir: the parent run every job nests under

CHECKPOINTS = "checkpoints"  # artifact folder of the engine's latest.npz and best.npz
LATEST_CHECKPOINT = f"{CHECKPOINTS}/latest.npz"
CONFIG_ARTIFACT = "config.yaml"

METRICS_PER_BATCH = 200  # metric points buffered before one asynchronous log_batch


@dataclass(frozen=True)
class Store:
    """A tracking URI plus, for the embedded SQLite store, the folder that holds artifacts."""

    uri: str
    artifact_root: Path | None

    @classmethod
    def resolve(cls, uri: str | None, base_dir: str | os.PathLike[str]) -> Store:
        """``None`` -> ``sqlite:///mlflow.db`` + ``mlartifacts/`` in ``base_dir``.

        Relative SQLite paths are resolved against ``base_dir`` (the directory the command was
        started from), never against Hydra's per-job output folder.
        """
        base = Path(base_dir).resolve()
        if uri is None:
            return cls(f"sqlite:///{base / 'mlflow.db'}", base / "mlartifacts")
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            db = db if db.is_absolute() else base / db
            return cls(f"sqlite:///{db}", db.parent / "mlartifacts")
        return cls(uri, None)  # a server decides where artifacts go

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def ensure_experiment(self, name: str) -> str:
        """Return the id of experiment ``name``, creating it (and a fresh store) if needed."""
        client = self.client()
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = self.artifact_root.as_uri() if self.artifact_root else None
        return client.create_experiment(name, artifact_location=location)

    def ui_command(self) -> str:
        """The exact command that opens this store in the MLflow UI."""
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri} in a browser"
        return f"mlflow ui --backend-store-uri {self.uri}"


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
    items = [Param(k, str(v)) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[i:i + 100])


def git_commit() -> str | None:
    """Commit of the source tree the harness runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class MlflowTracker(Callback):
    """One MLflow run: params, tags and dataset at start, metrics/samples/checkpoints as they come."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._buffer: list[Metric] = []
        self._pending = []  # RunOperations of asynchronous batches, awaited at the end
        self._checkpoints: set[str] = set()  # local files: the engine's latest.npz, best.npz

    @classmethod
    def start(cls, store: Store, experiment_id: str, run_name: str | None = None,
              parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> MlflowTracker:
        client = store.client()
        all_tags = {"mlflow.source.type": "LOCAL", "host": socket.gethostname(), **(tags or {})}
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    @classmethod
    def reopen(cls, store: Store, run_id: str) -> MlflowTracker:
        """Continue an ended run (resume): it is RUNNING again until it ends anew."""
        client = store.client()
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return cls(client, run_id)

    # --- what is known before training -------------------------------------------------

    def log_config(self, config: dict, yaml_text: str) -> None:
        log_params(self.client, self.run_id, flatten(config))
        self.client.log_text(self.run_id, yaml_text, CONFIG_ARTIFACT)

    def log_dataset(self, name: str, source: str, sha256: str, n_chars: int) -> None:
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        dataset = MetaDataset(CodeDatasetSource({"corpus": name, "source": source,
                                                 "chars": str(n_chars)}),
                              name=name, digest=sha256[:16])
        entity = DatasetInput(dataset._to_mlflow_entity(),
                              tags=[InputTag("mlflow.data.context", "training")])
        # Parallel jobs of a sweep log the same dataset: the store inserts its row only when it is missing,
        # so one job can lose that race on the unique (experiment, name, digest) key. The row exists then,
        # and linking it again succeeds.
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=[entity])
                break
            except MlflowException as err:
                # SQLite, PostgreSQL and MySQL word the refusal differently; MLflow passes the driver's
                # text on under INTERNAL_ERROR (through a tracking server, in the REST error's message).
                refused = err.error_code == "RESOURCE_ALREADY_EXISTS" or any(text in str(err) for text in (
                    "UNIQUE constraint failed", "duplicate key value violates unique constraint",
                    "Duplicate entry"))
                if not refused or attempt == 2:
                    raise
                time.sleep(0.1)
        self.client.set_tag(self.run_id, TAG_DATASET_SHA, sha256)

    # --- engine Callback ----------------------------------------------------------------

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(self._buffer) >= METRICS_PER_BATCH:
            self.flush()

    def on_sample(self, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"samples/iter_{step:08d}.txt")

    def on_checkpoint(self, path: str, step: int, is_best: bool) -> None:
        # Uploaded once at the end: copying every periodic checkpoint would cost time.
        self._checkpoints.add(path)

    # --- the end --------------------------------------------------------------------------

    def flush(self) -> None:
        if self._buffer:
            self._pending.append(self.client.log_batch(self.run_id, metrics=self._buffer,
                                                       synchronous=False))
            self._buffer = []

    def upload_checkpoints(self) -> None:
        """The latest and best checkpoints the engine reported, as artifacts under checkpoints/."""
        for path in sorted(self._checkpoints):
            if Path(path).exists():
                self.client.log_artifact(self.run_id, path, CHECKPOINTS)

    def download(self, artifact: str, into: Path) -> str:
        return self.client.download_artifacts(self.run_id, artifact, str(into))

    def finish(self, status: str, reason: str = "", engine_status: str | None = None) -> None:
        """Wait for every queued metric, then end the run: FINISHED, FAILED or KILLED."""
        self.flush()
        try:
            for op in self._pending:
                op.wait()  # raises if any batch was lost
        finally:
            self._pending = []
            tags = [RunTag(TAG_REASON, reason[:5000])] if reason else []
            if engine_status:
                tags.append(RunTag(TAG_STATUS, engine_status))
            if tags:
                self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, status=status)
