"""The outbox: a run's metric points and files in one ordered queue, and the thread that delivers it.

Training never waits for the store: what it reports is queued here and a background thread sends it every
FLUSH_SECONDS (at once when a batch fills). While the store is away the queue keeps everything and training goes
on; an item leaves the queue only once the store has it. Files are private copies queued behind the metric points
logged before them, so a checkpoint in the store always comes with the complete metric history up to its step.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from charrnn_experiments.faults import describe_fault, first_line, local_fault
from charrnn_experiments.lease import HEARTBEAT_SECONDS, heartbeat
from charrnn_experiments.store import StoreWriteError, sqlite_error, sqlite_full

METRICS_PER_BATCH = 200  # a full batch wakes the sender at once
# MLflow's log_batch limit: one request per batch, so that what leaves the queue is exactly what the store took
MAX_METRICS_PER_REQUEST = 1000
FLUSH_SECONDS = 2.0  # otherwise queued points wait at most this long
END_WAIT_SECONDS = 600.0  # at its end a run waits this long for an absent store


def refused(err: MlflowException) -> bool:
    """The store answered and said no (a 4xx other than 429): retrying the same request cannot help."""
    status = err.get_http_status_code()
    return 400 <= status < 500 and status != 429


@dataclass
class _Artifact:
    """A file to upload into ``folder``; ``local`` is a private copy, removed once it is in the store."""

    local: Path
    folder: str

    @property
    def name(self) -> str:
        return f"{self.folder}/{self.local.name}"


class Outbox:
    """One run's queue and its sender; ``folder`` (this run's own) holds the private copies of queued files."""

    def __init__(self, client: MlflowClient, run_id: str, store_uri: str = "", folder: Path | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.store_uri = store_uri
        self.folder = folder
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

    # --- queueing: never waits for the store ------------------------------------------------

    def put_metrics(self, points: list[Metric]) -> None:
        self._raise_if_failed()
        with self._lock:
            self._queue.extend(points)
            full = sum(isinstance(item, Metric) for item in self._queue) >= METRICS_PER_BATCH
        self._start_sender()
        if full:
            self._wake.set()

    def put_text(self, text: str, folder: str, name: str) -> None:
        copy = self._private_path(name)
        copy.write_text(text, encoding="utf-8")
        self._enqueue(_Artifact(copy, folder))

    def put_file(self, path: Path, folder: str) -> None:
        """A private copy of ``path``, to be stored in ``folder``: whoever wrote it may replace it at once, and
        what reaches the store must be this version. A hard link costs nothing (a file replaced by a rename
        later keeps this version)."""
        copy = self._private_path(path.name)
        try:
            os.link(path, copy)
        except OSError:
            shutil.copyfile(path, copy)
        self._enqueue(_Artifact(copy, folder))

    def _private_path(self, name: str) -> Path:
        if self.folder is None:
            raise RuntimeError("the outbox needs a folder to queue files")
        self._copies += 1
        folder = self.folder / f"{self._copies:06d}"
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
            for old in [
                item
                for item in self._queue
                if isinstance(item, _Artifact) and item.name == artifact.name and item is not self._sending
            ]:
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
                    self._say(
                        f"error: tracking store refused {getattr(dropped, 'name', 'an update')} of run "
                        f"{self.run_id}: {first_line(err)[:300]}"
                    )
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
            self._say(
                f"tracking store {self.store_uri} is back after "
                f"{time.monotonic() - self._away_since:.0f} s; delivering the waiting points"
            )
            self._away_since = None

    def _away(self, err: Exception) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            self._say(
                f"warning: tracking store {self.store_uri} unreachable ({first_line(err)[:200]}); "
                "training goes on, metrics and checkpoints wait here until it returns"
            )
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
                    for item in self._queue[: min(budget, MAX_METRICS_PER_REQUEST)]:
                        if not isinstance(item, Metric):
                            break
                        batch.append(item)
            if isinstance(head, Metric):
                self.client.log_batch(self.run_id, metrics=batch)
                with self._lock:
                    del self._queue[: len(batch)]
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
            heartbeat(self.client, self.run_id)
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

    def drain(self, give_up: threading.Event | None = None) -> tuple[str, str] | None:
        """Wait until the store has everything queued: at most END_WAIT_SECONDS of absence, or until
        ``give_up`` is set. None once it has; else why it never came and when it can (the run stays RUNNING
        in the store, and what it lacks stays :meth:`waiting`)."""
        with self._lock:
            self._closing = True
            pending = bool(self._queue)
        if self._sender is None and not pending:
            return None
        self._start_sender()
        self._wake.set()
        deadline = time.monotonic() + END_WAIT_SECONDS
        said = False
        while self._sender.is_alive():
            self._sender.join(0.2)
            if self._away_since is not None and not said:
                self._say(
                    f"waiting up to {END_WAIT_SECONDS:.0f} s for the tracking store to take "
                    f"{self.waiting()} (Ctrl-C gives up)"
                )
                said = True
            if self._away_since is None:
                deadline = time.monotonic() + END_WAIT_SECONDS
            away = self._away_since is not None
            if away and (time.monotonic() > deadline or (give_up is not None and give_up.is_set())):
                return f"tracking store {self.store_uri} unreachable", "it is back"
        if self.store_full is not None:
            return self.store_full, "its disk has space"
        return None
