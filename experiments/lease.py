"""The run lease: which process writes a RUNNING run, whether it is still alive, and how a resume takes a run over.

A run's owner tag names its writer (:class:`Owner`); the writer's sender refreshes the heartbeat tag while it
reaches the store. A RUNNING run is alive while its writer's process answers (on this machine) or its last sign
of life is recent (elsewhere). A resume claims an ended or dead run with a param named after the previous owner:
params are written once, so of two resumes of one ending the store accepts exactly one.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import RunStatus, RunTag
from mlflow.exceptions import MlflowException

from charrnn_experiments.store import TrackingError

TAG_OWNER = "charrnn.owner"  # Owner.format() of the process writing the run
TAG_HEARTBEAT = "charrnn.heartbeat"  # unix time the owner last reached the store
CLAIM_PARAM = "charrnn.resumed_from."  # + the previous owner's token: one resume per ending
FIRST_TOKEN = "first"  # the token of a run's first writer when its tag names none

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0  # a RUNNING run whose owner is silent this long elsewhere is taken as dead


@dataclass(frozen=True)
class Owner:
    """The process writing a run, as the owner tag and a claim param spell it: ``<host> <pid> <token> <unix time>``
    (the token tells two writers of one run apart; the time is when this one took the run)."""

    host: str
    pid: int
    token: str
    since: float

    @classmethod
    def new(cls) -> Owner:
        """This process, taking a run now."""
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time())

    def format(self) -> str:
        return f"{self.host} {self.pid} {self.token} {self.since:.0f}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner a tag or claim names; None for a run that has none (or a tag not of this form)."""
        fields = text.split()
        if len(fields) != 4:
            return None
        host, pid, token, since = fields
        try:
            return cls(host, int(pid), token, float(since))
        except ValueError:
            return None

    @property
    def local(self) -> bool:
        """Whether the process runs on this machine, where its pid can be asked."""
        return self.host == socket.gethostname()


def owner_of(run) -> Owner | None:
    return Owner.parse(run.data.tags.get(TAG_OWNER, ""))


def lease_tags() -> dict[str, str]:
    """A new run's owner (this process) and first heartbeat."""
    return {TAG_OWNER: Owner.new().format(), TAG_HEARTBEAT: f"{time.time():.0f}"}


def heartbeat(client: MlflowClient, run_id: str) -> None:
    client.set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.0f}")


def owner_alive(run) -> str | None:
    """Why a RUNNING run's writer looks alive (one phrase), or None when it is gone."""
    if run.info.status != "RUNNING":
        return None
    seen = float(run.data.tags.get(TAG_HEARTBEAT, run.info.start_time / 1000))
    return process_alive(owner_of(run), seen)


def process_alive(owner: Owner | None, last_seen: float) -> str | None:
    """On this machine the writer's process id answers; elsewhere its last sign of life must be recent."""
    if owner is not None and owner.local:
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"process {owner.pid} on this machine is writing it"
    age = time.time() - last_seen
    if age > STALE_SECONDS:
        return None
    where = f"process {owner.pid} on {owner.host}" if owner is not None else "its writer"
    return f"{where} reported {age:.0f} s ago"


def claim(client: MlflowClient, run) -> None:
    """Take over an ended (or dead) run for a resume; raises TrackingError when another command has.

    Params can be written once only, so logging one named after the previous owner is a claim that
    cannot race: of two resumes of the same ending, the store accepts exactly one.
    """
    alive = owner_alive(run)
    if alive:
        raise TrackingError(f"run {run.info.run_id} is RUNNING ({alive}); stop that first")
    previous = owner_of(run)
    previous_token = previous.token if previous is not None else FIRST_TOKEN
    # a resume killed between its claim and taking ownership left a claim naming it: continue from it
    while (claimed := run.data.params.get(f"{CLAIM_PARAM}{previous_token}")) is not None:
        claimer = Owner.parse(claimed)
        if process_alive(claimer, claimer.since):
            raise TrackingError(
                f"run {run.info.run_id} is being resumed by another command right now "
                f"(process {claimer.pid} claimed it)"
            )
        previous_token = claimer.token
    owner = Owner.new().format()
    try:
        client.log_param(run.info.run_id, f"{CLAIM_PARAM}{previous_token}", owner)
    except MlflowException as err:
        if err.error_code != "INVALID_PARAMETER_VALUE":  # not a lost race: the store failed
            raise
        raise TrackingError(
            f"run {run.info.run_id} is being resumed by another command right now (it claimed the run first)"
        ) from None
    # RUNNING before the owner tag moves: whoever reads the new owner also reads RUNNING and checks it
    client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    client.log_batch(run.info.run_id, tags=[RunTag(TAG_OWNER, owner), RunTag(TAG_HEARTBEAT, f"{time.time():.0f}")])
