"""Where the tracking store is and whether it answers: the URI and, for the embedded SQLite store, its file and
artifact folder; creating a fresh SQLite store without a race; probing a server or database in seconds; and
SQLite's refusals (a corrupt, read-only or full file) as one line each.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from charrnn.errors import CharRNNError
from charrnn_experiments.faults import describe_fault, first_line, unwritable
from charrnn_experiments.ui_view import EXPERIMENT_TAGS, SAVED_VIEW_KEY, TAG_SAVED_VIEW, saved_view_tag

UI_PORT = 5000  # mlflow ui's default port
CONNECT_SECONDS = 5.0  # an unreachable tracking server fails the command this fast
# A tracking server whose database is down holds each request for ~100 s while it retries the database, and
# MLflow's client retries that: minutes before an error. One request without retries shows it in this time,
# which must leave room for a healthy server's cold first request (it opens its store: a few seconds).
PROBE_SECONDS = 20.0
# Stores reached over the network, by URI scheme: their default ports, for the reachability check.
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
# One request is tried three times (a few seconds of back-off), not MLflow's default of seven times
# with back-off up to minutes: the sender retries on its own and the start must fail fast.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def use_http_defaults() -> None:
    """HTTP_DEFAULTS for this process and those it starts, where the user has not set them: MLflow reads them
    from the environment at each request, so each entry point (a command's main, a job's task) sets them first."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


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
            db = Path(unquote(uri[len(SQLITE_PREFIX) :]))
            db = db if db.is_absolute() else base / db
            return cls(sqlite_uri(db), db.parent / "mlartifacts")
        return cls(uri, None)  # a server decides where artifacts go

    @property
    def sqlite_path(self) -> Path | None:
        return Path(unquote(self.uri[len(SQLITE_PREFIX) :])) if self.uri.startswith(SQLITE_PREFIX) else None

    def client(self, create: bool = True) -> MlflowClient:
        """A client of a store that exists and answers, or a one-line :class:`TrackingError` within seconds.

        Commands started together on a fresh SQLite store would race on its schema migration: the first
        to open it creates it (unless ``create`` is false) while holding a lock file beside it
        (``mlflow.db.lock``), see :func:`create_sqlite_store`.
        """
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
                raise TrackingError(
                    f"no tracking store at {db}; give tracking.uri (or MLFLOW_TRACKING_URI) "
                    "of the store the run was tracked in"
                )
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
            raise TrackingError(
                f"tracking store {db} cannot be written ({describe_fault(fault)}); make it "
                "writable or set tracking.uri (or MLFLOW_TRACKING_URI) to a store that is"
            )

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
            raise TrackingError(
                f"cannot reach the tracking {what} {_without_password(url)} "
                f"({err.strerror or err}); start it, or set tracking.uri (or "
                "MLFLOW_TRACKING_URI) to a store that runs"
            ) from None
        if url.scheme in ("http", "https"):
            self._check_server_answers(url)

    def _check_server_answers(self, url) -> None:
        """One REST request, no retries: a server that answers 5xx or not at all in PROBE_SECONDS has lost its
        database. Through MLflow's own request helper, so that its credentials and TLS settings apply."""
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        try:
            response = http_request(
                get_default_host_creds(self.uri),
                "/api/2.0/mlflow/experiments/search",
                "POST",
                json={"max_results": 1},
                max_retries=0,
                timeout=PROBE_SECONDS,
                raise_on_status=False,
            )
        except MlflowException as err:
            if not _timed_out(err):
                return  # not this check's to judge: MLflow's client reports it below
            why = f"no answer in {PROBE_SECONDS:.0f} s"
        else:
            if response.status_code < 500:
                return
            why = f"HTTP {response.status_code}"
        raise TrackingError(
            f"the tracking server {_without_password(url)} answers but its database does not "
            f"({why}); see the server's log (make server: team-server/mlflow.log, "
            "team-server/postgres.log)"
        )

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
            return client.create_experiment(
                name, artifact_location=location, tags={**EXPERIMENT_TAGS, TAG_SAVED_VIEW: saved_view_tag()}
            )
        except MlflowException:  # another command created it a moment ago
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def ui_address(self, experiment_id: str) -> str:
        """How to see an experiment's runs: the command that serves this store (none for a server), then the
        URL of its runs table. MLflow 3 opens an experiment on its GenAI overview unless the URL asks for
        the model-training view (3.17: the parameter holds for that page and its sidebar's links, not for a run's
        page opened from the table; see ui_view.TAG_EXPERIMENT_KIND), in charrnn's saved view (TAG_SAVED_VIEW)."""
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
        return (
            f"tracking store {db} is not a readable MLflow database ({err}); move it aside "
            f"(mv {db} {db}.broken) or set tracking.uri (or MLFLOW_TRACKING_URI) to another store"
        )
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
            getattr(err, "reason", None), urllib3.exceptions.TimeoutError
        ):
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
