"""MLflow side of the harness: where the store is, the run's lifecycle, and a Callback that logs.

The engine knows nothing of MLflow; :class:`MlflowTracker` plugs into its Callback interface.
Training never waits for the store: metrics, samples and checkpoints go into an ordered queue that a
background thread delivers every few seconds (or when a batch fills). While the store is away the
queue keeps everything and training goes on; the run's end delivers what is left. Checkpoints are
queued behind the metrics logged before them, so a checkpoint in the store always comes with the
complete metric history up to its iteration, and resume after a crash can continue exactly.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from charrnn.errors import CharRNNError
from charrnn.train import Callback
from charrnn_experiments.faults import describe_fault, local_fault, unwritable

# Tag names, shared with the sweep callback and read back by the analysis tools.
TAG_SWEEP = "charrnn.sweep"              # sweep directory of a multirun job
TAG_JOB = "charrnn.job"                  # Hydra job number inside the sweep
TAG_STATUS = "charrnn.status"            # the engine's stop status (finished, diverged, ...)
TAG_STOP = "charrnn.stop"                # why the engine stopped: a charrnn.train.StopReason value
TAG_SIGNAL = "charrnn.signal"            # the signal that stopped a KILLED run (SIGINT, SIGTERM)
TAG_REASON = "charrnn.reason"            # why the run stopped or failed, one line
TAG_DATASET_SHA = "charrnn.dataset.sha256"
TAG_DATASET_VERSION = "charrnn.dataset.version"  # a versioned corpus's version (pystdlib-v1)
TAG_DATASET_DIFFERS = "charrnn.dataset.differs"  # why this text is not that version's reference text
TAG_BEST_CHILD = "charrnn.best_child_run_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_OWNER = "charrnn.owner"              # "<host> <pid> <token> <unix time>" of the process writing the run
TAG_HEARTBEAT = "charrnn.heartbeat"      # unix time the owner last reached the store
# MLflow 3's marker of an experiment's kind (the UI's ExperimentKind), set for other clients and UI versions that
# read it. MLflow 3.17's UI does not: it takes the GenAI / model-training view from the address's
# workflowType=machine_learning (see Store.ui_address), else from what the browser stored when its user last flipped
# the view's toggle (localStorage mlflow.workflowType_v1), else GenAI. A run's link drops workflowType, so in a fresh
# browser a run page opens in the GenAI view until the user picks Model training once.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow's primary metric of an experiment and its direction (the two tags mlflow.tracking.fluent's
# _set_experiment_primary_metric writes). MLflow 3.17's UI reads the name only, in the experiment page's chart view,
# where it makes sure a val/loss chart is drawn; it orders nothing by it. The direction is for other readers.
TAG_PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"
TAG_PRIMARY_METRIC_GREATER_IS_BETTER = "mlflow.experiment.primaryMetric.greaterIsBetter"
EXPERIMENT_TAGS = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND, TAG_PRIMARY_METRIC: "val/loss",
                   TAG_PRIMARY_METRIC_GREATER_IS_BETTER: "False"}  # every experiment charrnn makes; see above
# A saved view of the experiment's runs page, as MLflow 3.17's *Views* > *Save as new view* writes it (the tag
# mlflow.sharedViewState.<key>; the address's viewStateShareKey=<key> opens it): its chart view starts with a
# section of train/loss and val/loss, titled so (MLflow's own titles are both "loss"). The UI appends a chart for
# every other metric after it, in sections of its own; isAccordionReordered keeps ours first (else sorted by name).
# Empty charts stay (hideEmptyCharts off): a sweep's parent row, folded, has no losses, and MLflow then leaves the
# two cards in place saying no visible run has data, rather than an empty section above best/val/loss.
SAVED_VIEW_KEY = "charrnn-losses"
TAG_SAVED_VIEW = f"mlflow.sharedViewState.{SAVED_VIEW_KEY}"
SAVED_VIEW_NAME = "charrnn: losses first"
LOSS_CHARTS = ("train/loss", "val/loss")
# The model's parameter count, logged once at step 0: a study's table sets cells against it (a metric, not a
# param, because it is no config key and would read as a swept param).
METRIC_NUM_PARAMS = "model/num_params"
CLAIM_PARAM = "charrnn.resumed_from."    # + the previous owner's token: one resume per ending
PARENT_FILE = "mlflow_parent.json"       # in the sweep dir: the parent run every job nests under

CHECKPOINTS = "checkpoints"  # artifact folder of the engine's latest.npz and best.npz
LATEST_CHECKPOINT = f"{CHECKPOINTS}/latest.npz"
BEST_CHECKPOINT = f"{CHECKPOINTS}/best.npz"
CONFIG_ARTIFACT = "config.yaml"

METRICS_PER_BATCH = 200      # a full batch wakes the sender at once
MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit
FLUSH_SECONDS = 2.0          # otherwise queued points wait at most this long
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0         # a RUNNING run whose owner is silent this long elsewhere is taken as dead
END_WAIT_SECONDS = 600.0     # at its end a run waits this long for an absent store
UI_PORT = 5000               # mlflow ui's default port
CONNECT_SECONDS = 5.0        # an unreachable tracking server fails the command this fast
# A tracking server whose database is down holds each request for ~100 s while it retries the database, and
# MLflow's client retries that: minutes before an error. One request without retries shows it in this time,
# which must leave room for a healthy server's cold first request (it opens its store: a few seconds).
PROBE_SECONDS = 20.0
# Stores reached over the network, by URI scheme: their default ports, for the reachability check.
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
# One request is tried three times (a few seconds of back-off), not MLflow's default of seven times
# with back-off up to minutes: the sender retries on its own and the start must fail fast.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class TrackingError(CharRNNError):
    """The tracking store cannot be reached or refuses the run; the message is one line."""


class StoreWriteError(TrackingError):
    """A file of the run could not be written into the store for a local reason (a full disk, a read-only
    folder); the message is one line naming the file, the reason and the path."""


def _without_password(url) -> str:
    """The URI as it can be printed: a database password never reaches the console."""
    if url.password is None:
        return url.geturl()
    return url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@")).geturl()


def saved_view_tag() -> str:
    """The value of :data:`TAG_SAVED_VIEW`: the envelope and the "deflate;" + base64 zlib state of MLflow 3.17's UI
    (module 53787 and its compression helper); the UI's own defaults but for the charts, their sections'
    order and hideEmptyCharts (see TAG_SAVED_VIEW)."""
    section = "charrnn-losses-section"
    charts = [{"uuid": f"charrnn-{key.replace('/', '-')}", "type": "LINE", "runsCountToCompare": 10,
               "metricSectionId": section, "deleted": False, "isGenerated": False, "displayName": key,
               "metricKey": key, "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
               "range": {}, "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
               "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
               "useGlobalLineSmoothing": True} for key in LOSS_CHARTS]
    state = {"searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
             "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
             "selectedColumns": ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"],
             "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "FIRST_10_RUNS", "compareRunCharts": charts,
             "compareRunSections": [{"uuid": section, "name": "losses", "display": True, "isReordered": False,
                                     "deleted": False, "isGenerated": False}],
             "viewMaximized": False, "runListHidden": False, "isAccordionReordered": True,
             "useGroupedValuesInCharts": True, "hideEmptyCharts": False, "groupBy": None, "groupsExpanded": {},
             "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}}
    packed = base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":")).encode())).decode()
    millis = int(time.time() * 1000)
    return json.dumps({"name": SAVED_VIEW_NAME, "createdAt": millis, "updatedAt": millis,
                       "state": f"deflate;{packed}"}, separators=(",", ":"))


@dataclass(frozen=True)
class Store:
    """A tracking URI plus, for the embedded SQLite store, the folder that holds artifacts."""

    uri: str
    artifact_root: Path | None

    @classmethod
    def resolve(cls, uri: str | None, base_dir: str | os.PathLike[str]) -> Store:
        """``None`` -> ``$MLFLOW_TRACKING_URI`` when set (as MLflow does), else ``sqlite:///mlflow.db`` +
        ``mlartifacts/`` in ``base_dir``.

        Relative SQLite paths are resolved against ``base_dir`` (the directory the command was
        started from), never against Hydra's per-job output folder.
        """
        base = Path(base_dir).resolve()
        uri = uri if uri is not None else os.environ.get("MLFLOW_TRACKING_URI") or None
        if uri is None:
            return cls(sqlite_uri(base / "mlflow.db"), base / "mlartifacts")
        if uri.startswith(SQLITE_PREFIX):
            db = Path(unquote(uri[len(SQLITE_PREFIX):]))
            db = db if db.is_absolute() else base / db
            return cls(sqlite_uri(db), db.parent / "mlartifacts")
        return cls(uri, None)  # a server decides where artifacts go

    @property
    def sqlite_path(self) -> Path | None:
        return Path(unquote(self.uri[len(SQLITE_PREFIX):])) if self.uri.startswith(SQLITE_PREFIX) else None

    def client(self, create: bool = True) -> MlflowClient:
        """A client of a store that exists and answers, or a one-line :class:`TrackingError` within seconds.

        Commands started together on a fresh SQLite store would race on its schema migration: the first
        to open it creates it (unless ``create`` is false) while holding a lock file beside it
        (``mlflow.db.lock``), see :func:`create_sqlite_store`.
        """
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        # MLflow logs each database error with its traceback before raising it; the harness reports every one
        # in a line of its own (a full disk, a read-only or corrupt file, an outage)
        logging.getLogger("mlflow.store.db.utils").addFilter(_below_error)
        self.check_reachable()
        db = self.sqlite_path
        try:
            if db is None:
                client = MlflowClient(tracking_uri=self.uri)
                client.search_experiments(max_results=1)
                return client
            if not create and not db.exists():
                raise TrackingError(f"no tracking store at {db}; give tracking.uri (or MLFLOW_TRACKING_URI) "
                                    "of the store the run was tracked in")
            db.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{db}.lock"):
                if not db.exists():
                    create_sqlite_store(db, self.artifact_root)
                client = MlflowClient(tracking_uri=self.uri)
                client.search_experiments(max_results=1)  # opening the store creates or upgrades its schema
        except Exception as err:
            # SQLite's refusal (a corrupt or read-only file) may come wrapped by MLflow or SQLAlchemy, or bare
            refusal = sqlite_error(err) if db is not None else None
            if refusal is not None:
                raise TrackingError(sqlite_store_fault(db, refusal)) from None
            if isinstance(err, MlflowException):
                raise TrackingError(f"tracking store {self.uri} does not answer: {first_line(err)}") from None
            raise
        return client

    def check_writable(self) -> None:
        """A SQLite store that cannot be written (a read-only file or folder, a full disk) fails with one line
        before a run is created, not with the database's refusal of its first insert."""
        db = self.sqlite_path
        if db is None or not db.exists():
            return
        try:
            with open(db, "ab"):  # nothing is written: the open alone asks for write access
                pass
        except OSError as err:
            fault = err
        else:
            fault = unwritable(db.parent)  # SQLite's journal is a file beside the store
        if fault is not None:
            raise TrackingError(f"tracking store {db} cannot be written ({describe_fault(fault)}); make it "
                                "writable or set tracking.uri (or MLFLOW_TRACKING_URI) to a store that is")

    def check_reachable(self) -> None:
        """A tracking server or database that does not answer fails in seconds, not after MLflow's retries."""
        url = urlparse(self.uri)
        default_port = DEFAULT_PORTS.get(url.scheme.split("+")[0])  # postgresql+psycopg2 -> postgresql
        if default_port is None or not url.hostname:
            return
        try:
            socket.create_connection((url.hostname, url.port or default_port), timeout=CONNECT_SECONDS).close()
        except OSError as err:
            what = "server" if url.scheme in ("http", "https") else "database"
            raise TrackingError(f"cannot reach the tracking {what} {_without_password(url)} "
                                f"({err.strerror or err}); start it, or set tracking.uri (or "
                                "MLFLOW_TRACKING_URI) to a store that runs") from None
        if url.scheme in ("http", "https"):
            self._check_server_answers(url)

    def _check_server_answers(self, url) -> None:
        """One REST request, no retries: a server that answers 5xx or not at all in PROBE_SECONDS has lost its
        database. Through MLflow's own request helper, so that its credentials and TLS settings apply."""
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        try:
            response = http_request(get_default_host_creds(self.uri), "/api/2.0/mlflow/experiments/search",
                                    "POST", json={"max_results": 1}, max_retries=0, timeout=PROBE_SECONDS,
                                    raise_on_status=False)
        except MlflowException as err:
            if not _timed_out(err):
                return  # not this check's to judge: MLflow's client reports it below
            why = f"no answer in {PROBE_SECONDS:.0f} s"
        else:
            if response.status_code < 500:
                return
            why = f"HTTP {response.status_code}"
        raise TrackingError(f"the tracking server {_without_password(url)} answers but its database does not "
                            f"({why}); see the server's log (make server: team-server/mlflow.log, "
                            "team-server/postgres.log)")

    def ensure_experiment(self, name: str, client: MlflowClient | None = None) -> str:
        """Return the id of experiment ``name``, creating it (and a fresh store) if needed, marked as a model-training
        experiment (:data:`EXPERIMENT_KIND`) whose primary metric is val/loss, lower better
        (:data:`EXPERIMENT_TAGS`), with the saved view :data:`TAG_SAVED_VIEW`; one found without some of these tags
        gets them, and keeps those it has."""
        client = client or self.client()
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            for key, value in EXPERIMENT_TAGS.items():
                if key not in exp.tags:
                    client.set_experiment_tag(exp.experiment_id, key, value)
            if TAG_SAVED_VIEW not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, TAG_SAVED_VIEW, saved_view_tag())
            return exp.experiment_id
        location = self.artifact_root.as_uri() if self.artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags={**EXPERIMENT_TAGS, TAG_SAVED_VIEW: saved_view_tag()})
        except MlflowException:  # another command created it a moment ago
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def ui_address(self, experiment_id: str) -> str:
        """How to see an experiment's runs: the command that serves this store (none for a server), then the
        URL of its runs table. MLflow 3 opens an experiment on its GenAI overview unless the URL asks for
        the model-training view (3.17: the parameter holds for that page and its sidebar's links, not for a run's
        page opened from the table; see TAG_EXPERIMENT_KIND), in charrnn's saved view (:data:`TAG_SAVED_VIEW`)."""
        page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={SAVED_VIEW_KEY}"
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri.rstrip('/')}/{page}"
        return f"mlflow ui --backend-store-uri {self.uri}, then open http://127.0.0.1:{UI_PORT}/{page}"


SQLITE_PREFIX = "sqlite:///"


def sqlite_uri(db: Path) -> str:
    """The store URI of SQLite file ``db``: a path holding ``?``, ``#`` or ``%`` is percent-encoded, which
    SQLAlchemy decodes (raw, ``?`` began the URI's query and ``%41`` read as ``A``)."""
    return f"{SQLITE_PREFIX}{quote(str(db))}"


def sqlite_error(err: BaseException | None) -> sqlite3.Error | None:
    """The SQLite error behind ``err`` (through SQLAlchemy's and MLflow's wrappers), if one is."""
    while err is not None:
        if isinstance(err, sqlite3.Error):
            return err
        err = err.__cause__ or err.__context__ or getattr(err, "orig", None)
    return None


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def sqlite_full(err: BaseException) -> bool:
    """Whether SQLite refused a write for want of disk space."""
    return getattr(sqlite_error(err), "sqlite_errorname", "") == "SQLITE_FULL"


def sqlite_store_fault(db: Path, err: sqlite3.Error) -> str:
    """One line for a SQLite store the database refuses, by SQLite's error code."""
    name = getattr(err, "sqlite_errorname", "")
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return (f"tracking store {db} is not a readable MLflow database ({err}); move it aside "
                f"(mv {db} {db}.broken) or set tracking.uri (or MLFLOW_TRACKING_URI) to another store")
    if name.startswith("SQLITE_READONLY"):
        return f"tracking store {db} is read-only ({err}); make it writable or set tracking.uri to another store"
    return f"tracking store {db} fails: {err}"


def _timed_out(err: BaseException | None) -> bool:
    """Whether a request failed for want of an answer: requests raises a read timeout as a Timeout, or as a
    ConnectionError over urllib3's MaxRetryError (even with no retries), which MLflow wraps again."""
    import requests
    import urllib3

    while err is not None:
        if isinstance(err, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)) or isinstance(
                getattr(err, "reason", None), urllib3.exceptions.TimeoutError):
            return True
        err = err.__cause__ or err.__context__
    return False


def create_sqlite_store(db: Path, artifact_root: Path | None) -> None:
    """Create an empty MLflow store at ``db``, all at once: MLflow's schema migrations run on a file beside it
    without a disk sync per statement (some 100 syncs, seconds on a real disk), which is then synced once and
    linked into place, never over a store that another program created meanwhile. A crash in between leaves
    at most that file behind, never a half-made store."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    building = db.with_name(f".{db.name}.creating-{os.getpid()}")
    building.unlink(missing_ok=True)

    def no_sync_while_building(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        if Path(cursor.execute("PRAGMA database_list").fetchone()[2]) == building:
            cursor.execute("PRAGMA synchronous = OFF")
        cursor.close()

    event.listen(Engine, "connect", no_sync_while_building)
    try:
        # opening an empty store runs the migrations and creates the Default experiment
        root = artifact_root or db.parent / "mlartifacts"
        SqlAlchemyStore(sqlite_uri(building), root.as_uri()).engine.dispose()
        with open(building, "rb+") as built:
            os.fsync(built.fileno())
        try:
            os.link(building, db)
        except FileExistsError:
            return
        directory = os.open(db.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the new name itself
        finally:
            os.close(directory)
    finally:
        event.remove(Engine, "connect", no_sync_while_building)
        building.unlink(missing_ok=True)


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


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


def refused(err: MlflowException) -> bool:
    """The store answered and said no (a 4xx other than 429): retrying the same request cannot help."""
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429


def new_owner() -> str:
    return f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex} {time.time():.0f}"


def owner_alive(run) -> str | None:
    """Why a RUNNING run's writer looks alive (one phrase), or None when it is gone."""
    if run.info.status != "RUNNING":
        return None
    seen = float(run.data.tags.get(TAG_HEARTBEAT, run.info.start_time / 1000))
    return process_alive(run.data.tags.get(TAG_OWNER, ""), seen)


def token(owner: str) -> str:
    """The unique part of an owner tag ("first" for a run that has none)."""
    fields = owner.split()
    return fields[2] if len(fields) == 4 else "first"


def local_pid(owner: str) -> int | None:
    """The process id in an owner tag when that process runs on this machine."""
    fields = owner.split()
    return int(fields[1]) if len(fields) == 4 and fields[0] == socket.gethostname() else None


def process_alive(owner: str, last_seen: float) -> str | None:
    """On this machine the writer's process id answers; elsewhere its last sign of life must be recent."""
    fields = owner.split()
    pid = local_pid(owner)
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"process {fields[1]} on this machine is writing it"
    age = time.time() - last_seen
    if age > STALE_SECONDS:
        return None
    where = f"process {fields[1]} on {fields[0]}" if len(fields) == 4 else "its writer"
    return f"{where} reported {age:.0f} s ago"


@dataclass
class _Artifact:
    """A file to upload into ``folder``; ``local`` is a private copy, removed once it is in the store."""

    local: Path
    folder: str

    @property
    def name(self) -> str:
        return f"{self.folder}/{self.local.name}"


class MlflowTracker(Callback):
    """One MLflow run: params, tags and dataset at start, then metrics, samples and checkpoints as they
    come, delivered in order by a background thread (see the module docstring)."""

    def __init__(self, client: MlflowClient, run_id: str, outbox: Path | None = None,
                 store_uri: str = "", logged_through: dict[str, int] | None = None) -> None:
        """``outbox``: a folder of this run's own for the private copies of queued files.
        ``logged_through``: per metric, the last step the store already has (a resumed run recomputes
        those steps exactly, and each step keeps one point)."""
        self.client = client
        self.run_id = run_id
        self.outbox = outbox
        self.store_uri = store_uri
        self._logged_through = dict(logged_through or {})
        self._queue: list[Metric | _Artifact] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None
        self._sending: _Artifact | None = None  # the file being uploaded: never replaced under the sender
        self._away_since: float | None = None
        self.store_full: str | None = None  # a SQLite store on a full disk (one line): the sender has stopped
        self._last_heartbeat = 0.0
        self._copies = 0
        self.failure: str | None = None  # the first file that could never be stored, and why (one line)

    @classmethod
    def start(cls, store: Store, experiment_id: str, run_name: str | None = None,
              parent_run_id: str | None = None, tags: dict[str, str] | None = None,
              client: MlflowClient | None = None) -> MlflowTracker:
        client = client or store.client()
        all_tags = {"mlflow.source.type": "LOCAL", "host": socket.gethostname(), TAG_OWNER: new_owner(),
                    TAG_HEARTBEAT: f"{time.time():.0f}", **(tags or {})}
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id, store_uri=store.uri)

    @staticmethod
    def claim(client: MlflowClient, run) -> None:
        """Take over an ended (or dead) run for a resume; raises TrackingError when another command has.

        Params can be written once only, so logging one named after the previous owner is a claim that
        cannot race: of two resumes of the same ending, the store accepts exactly one.
        """
        alive = owner_alive(run)
        if alive:
            raise TrackingError(f"run {run.info.run_id} is RUNNING ({alive}); stop that first")
        previous = token(run.data.tags.get(TAG_OWNER, ""))
        # a resume killed between its claim and taking ownership left a claim naming it: continue from it
        while (claimer := run.data.params.get(f"{CLAIM_PARAM}{previous}")) is not None:
            if process_alive(claimer, float(claimer.split()[-1])):
                raise TrackingError(f"run {run.info.run_id} is being resumed by another command right now "
                                    f"(process {claimer.split()[1]} claimed it)")
            previous = token(claimer)
        owner = new_owner()
        try:
            client.log_param(run.info.run_id, f"{CLAIM_PARAM}{previous}", owner)
        except MlflowException as err:
            if err.error_code != "INVALID_PARAMETER_VALUE":  # not a lost race: the store failed
                raise
            raise TrackingError(f"run {run.info.run_id} is being resumed by another command right now "
                                "(it claimed the run first)") from None
        # RUNNING before the owner tag moves: whoever reads the new owner also reads RUNNING and checks it
        client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        client.log_batch(run.info.run_id, tags=[RunTag(TAG_OWNER, owner),
                                                RunTag(TAG_HEARTBEAT, f"{time.time():.0f}")])

    # --- what is known before training -------------------------------------------------

    def log_config(self, config: dict, yaml_text: str) -> None:
        # a null key is no param: MLflow would show the string "None" (config.yaml keeps every key)
        log_params(self.client, self.run_id, {k: v for k, v in flatten(config).items() if v is not None})
        self.client.log_text(self.run_id, yaml_text, CONFIG_ARTIFACT)

    def log_dataset(self, name: str, source: str, sha256: str, n_chars: int, version: str | None = None,
                    differs: str | None = None) -> None:
        """The training text as an MLflow dataset input, and tags with its sha256 and, for a versioned corpus,
        its version and why the text differs from that version's reference text (so runs on different texts
        are never compared unawares)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        described = {"corpus": name, "source": source, "chars": str(n_chars)}
        if version:
            described["version"] = version
        dataset = MetaDataset(CodeDatasetSource(described),
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
        tags = {TAG_DATASET_SHA: sha256, TAG_DATASET_VERSION: version, TAG_DATASET_DIFFERS: differs}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items() if v])

    def log_num_params(self, num_params: int) -> None:
        """The model's parameter count, as a metric at step 0: comparison tables read it without a checkpoint."""
        self.client.log_metric(self.run_id, METRIC_NUM_PARAMS, num_params, step=0)

    # --- engine Callback: queue, never wait for the store -----------------------------------

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._raise_if_failed()
        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in metrics.items()
                  if step > self._logged_through.get(k, -1)]
        with self._lock:
            self._queue.extend(points)
            full = sum(isinstance(item, Metric) for item in self._queue) >= METRICS_PER_BATCH
        self._start_sender()
        if full:
            self._wake.set()

    def on_sample(self, text: str, step: int) -> None:
        self.queue_text(text, f"samples/iter_{step:08d}.txt")

    def queue_text(self, text: str, artifact_path: str) -> None:
        folder, name = artifact_path.rsplit("/", 1)
        copy = self._private_path(name)
        copy.write_text(text, encoding="utf-8")
        self._enqueue(_Artifact(copy, folder))

    def queue_folder(self, folder: Path, artifact_path: str) -> None:
        """Every file under ``folder`` into ``artifact_path``, delivered like checkpoints (a store that is
        away at this moment gets them when it is back)."""
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            relative = path.parent.relative_to(folder).as_posix()
            self._enqueue(_Artifact(self._private_copy(path),
                                    artifact_path if relative == "." else f"{artifact_path}/{relative}"))

    def on_checkpoint(self, path: str, step: int, is_best: bool) -> None:
        # A private copy: the engine replaces the file at its next save, and what reaches the store must
        # be the checkpoint of this step, queued behind this step's metrics. A hard link costs nothing
        # (the engine writes a new file and renames it over the old one, so the link keeps this one).
        self._enqueue(_Artifact(self._private_copy(Path(path)), CHECKPOINTS))

    def _private_copy(self, path: Path) -> Path:
        copy = self._private_path(path.name)
        try:
            os.link(path, copy)  # free; a file rewritten by rename later keeps this version
        except OSError:
            shutil.copyfile(path, copy)
        return copy

    def _private_path(self, name: str) -> Path:
        if self.outbox is None:
            raise RuntimeError("MlflowTracker needs an outbox folder to queue files")
        self._copies += 1
        folder = self.outbox / f"{self._copies:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def _raise_if_failed(self) -> None:
        """Training stops at its next report once a file could not be stored: the run has failed."""
        if self.failure is not None:
            raise StoreWriteError(self.failure)

    def _enqueue(self, artifact: _Artifact) -> None:
        self._raise_if_failed()
        with self._lock:
            # a newer copy of the same artifact replaces one still waiting: only the newest matters, and
            # it comes after every metric the older one came after
            for old in [item for item in self._queue if isinstance(item, _Artifact)
                        and item.name == artifact.name and item is not self._sending]:
                self._queue.remove(old)
                shutil.rmtree(old.local.parent, ignore_errors=True)
            self._queue.append(artifact)
        self._start_sender()
        self._wake.set()

    # --- the sender ------------------------------------------------------------------------

    def _start_sender(self) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_loop, name="mlflow-sender", daemon=True)
            self._sender.start()

    def _send_loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            try:
                self._deliver()
            except Exception as err:
                if sqlite_full(err):  # not an outage: nothing more can be stored until someone frees space
                    self.store_full = f"tracking store {self.store_uri}: {sqlite_error(err)} (no space left there)"
                    self.failure = self.failure or self.store_full  # training stops at its next report
                    return
                if isinstance(err, MlflowException) and refused(err):
                    with self._lock:  # the store answered no: retrying cannot help
                        dropped = self._queue.pop(0) if self._queue else None
                        self._sending = None
                    self._say(f"error: tracking store refused {getattr(dropped, 'name', 'an update')} of run "
                              f"{self.run_id}: {first_line(err)[:300]}")
                    continue
                fault = local_fault(err)
                if fault is not None and self._sending is not None:
                    self._drop_unwritable(fault)
                    continue
                self._away(err)  # the store is away: keep everything and try again
                continue
            self._back()
            with self._lock:
                if self._closing and not self._queue:
                    return

    def _drop_unwritable(self, fault: OSError) -> None:
        """The file being sent can never be written (a full disk, no permission): drop it and go on with the
        metric points queued behind it; the run ends FAILED with the first such cause."""
        with self._lock:
            dropped = self._sending
            self._queue.remove(dropped)
            self._sending = None
        shutil.rmtree(dropped.local.parent, ignore_errors=True)
        if fault.filename is None:  # a failed write names no file: the place in the store it was going to
            fault.filename = self._artifact_path(dropped.name)
        line = f"cannot store {dropped.name} of run {self.run_id}: {describe_fault(fault)}"
        self.failure = self.failure or line
        self._say(f"error: {line}")

    def _artifact_path(self, name: str) -> str:
        """Where artifact ``name`` of this run lives: a path for a local store, else its URI."""
        root = urlparse(self.client.get_run(self.run_id).info.artifact_uri)
        if root.scheme == "file":
            return str(Path(unquote(root.path)) / name)
        return f"{root.geturl()}/{name}"

    def _back(self) -> None:
        if self._away_since is not None:
            self._say(f"tracking store {self.store_uri} is back after "
                      f"{time.monotonic() - self._away_since:.0f} s; delivering the waiting points")
            self._away_since = None

    def _away(self, err: Exception) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            self._say(f"warning: tracking store {self.store_uri} unreachable ({first_line(err)[:200]}); "
                      "training goes on, metrics and checkpoints wait here until it returns")
        time.sleep(FLUSH_SECONDS)

    def _deliver(self) -> None:
        """Send what is queued now, in order; an item leaves the queue only once the store has it. (What
        training adds meanwhile waits for the next round, so a store slower than training still gets a
        heartbeat and a word when it is back.)"""
        with self._lock:
            budget = len(self._queue)
        while budget > 0:
            with self._lock:
                if not self._queue:
                    break
                head = self._queue[0]
                self._sending = head if isinstance(head, _Artifact) else None
                if isinstance(head, Metric):
                    batch = []
                    for item in self._queue[:min(budget, MAX_METRICS_PER_REQUEST)]:
                        if not isinstance(item, Metric):
                            break
                        batch.append(item)
            if isinstance(head, Metric):
                self.client.log_batch(self.run_id, metrics=batch)
                with self._lock:
                    del self._queue[:len(batch)]
                budget -= len(batch)
            else:
                self.client.log_artifact(self.run_id, str(head.local), head.folder)
                with self._lock:
                    self._queue.remove(head)
                    self._sending = None
                shutil.rmtree(head.local.parent, ignore_errors=True)
                budget -= 1
            self._back()
        if time.monotonic() - self._last_heartbeat > HEARTBEAT_SECONDS:
            self.client.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            self._last_heartbeat = time.monotonic()

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def waiting(self) -> str:
        with self._lock:
            metrics = sum(isinstance(item, Metric) for item in self._queue)
            files = [item.name for item in self._queue if isinstance(item, _Artifact)]
        return f"{metrics} metric points" + (f" and {', '.join(files)}" if files else "")

    # --- the end --------------------------------------------------------------------------

    def download(self, artifact: str, into: Path) -> str:
        return self.client.download_artifacts(self.run_id, artifact, str(into))

    def drain(self, give_up: threading.Event | None = None) -> None:
        """Wait until the store has everything queued: at most END_WAIT_SECONDS of absence, or until
        ``give_up`` is set. Raises TrackingError (the run stays RUNNING in the store) if it never came."""
        with self._lock:
            self._closing = True
            pending = bool(self._queue)
        if self._sender is None and not pending:
            return
        self._start_sender()
        self._wake.set()
        deadline = time.monotonic() + END_WAIT_SECONDS
        said = False
        while self._sender.is_alive():
            self._sender.join(0.2)
            if self._away_since is not None and not said:
                self._say(f"waiting up to {END_WAIT_SECONDS:.0f} s for the tracking store to take "
                          f"{self.waiting()} (Ctrl-C gives up)")
                said = True
            if self._away_since is None:
                deadline = time.monotonic() + END_WAIT_SECONDS
            away = self._away_since is not None
            if away and (time.monotonic() > deadline or (give_up is not None and give_up.is_set())):
                raise TrackingError(self._left_running(f"tracking store {self.store_uri} unreachable",
                                                       "it is back"))
        if self.store_full is not None:
            raise TrackingError(self._left_running(self.store_full, "its disk has space"))

    def _left_running(self, cause: str, once: str) -> str:
        """One line: why the run could not be ended in its store, and the two ways to continue it."""
        return (f"{cause}: run {self.run_id} keeps status RUNNING there and lacks {self.waiting()}; once {once}, "
                f"continue from its last stored checkpoint with train.resume={self.run_id} (every metric point) "
                f"or from here with train.resume={self._local_checkpoint()}")

    def _local_checkpoint(self) -> str:
        folder = self.outbox.parent if self.outbox else Path("<the run's folder>")
        return str(folder / "checkpoints" / Path(LATEST_CHECKPOINT).name)

    def finish(self, status: str, reason: str = "", tags: dict[str, str] | None = None,
               give_up: threading.Event | None = None) -> None:
        """Deliver everything queued, then end the run: FINISHED, FAILED or KILLED. A file that could never be
        stored fails a run that would have ended otherwise, and raises StoreWriteError once the run has ended."""
        self.drain(give_up)
        if self.outbox is not None:
            shutil.rmtree(self.outbox, ignore_errors=True)  # every queued copy is in the store now
        failed_here = self.failure is not None and status != "FAILED"
        if failed_here:
            status, reason = "FAILED", self.failure
        tags = {**(tags or {}), **({TAG_REASON: reason[:5000]} if reason else {})}
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.client.set_terminated(self.run_id, status=status)
        if failed_here:
            raise StoreWriteError(self.failure)
