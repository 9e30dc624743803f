"""SIGINT and SIGTERM for a charrnn-train job, from before its run exists to its exit status."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from charrnn.train import Callback, Trainer, TrainResult
from charrnn_experiments import tracking


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
