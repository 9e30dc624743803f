"""Console progress for a training run: a tqdm bar on an interactive terminal, log lines otherwise."""

from __future__ import annotations

import logging
import math
import sys
import time

from charrnn.train import Callback

log = logging.getLogger("charrnn")

PLAIN_LOG_SECONDS = 5.0  # without a terminal, at most one training line per this many seconds


class ProgressCallback(Callback):
    def __init__(self, total_iters: int | None, interactive: bool | None = None) -> None:
        self.total_iters = total_iters
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar = None
        self._last_step = 0
        self._last_line = -math.inf

    def on_train_start(self, trainer) -> None:
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_iters, unit="it", dynamic_ncols=True)

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._last_step)
            self._last_step = step
            shown = {k.split("/")[-1]: f"{v:.3f}" for k, v in metrics.items() if k in ("train/smooth_loss", "val/loss")}
            if shown:
                self._bar.set_postfix(shown, refresh=False)
            return
        is_eval = any(k.startswith("val/") for k in metrics)
        if not is_eval:  # evaluations always show; training lines at most every PLAIN_LOG_SECONDS
            if time.monotonic() - self._last_line < PLAIN_LOG_SECONDS:
                return
            self._last_line = time.monotonic()
        fields = " | ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        log.info("iter %d | %s", step, fields)

    def on_sample(self, text: str, step: int) -> None:
        if self._bar is None:
            log.info("sample at iter %d:\n%s", step, text)

    def on_train_end(self, result) -> None:
        if self._bar is not None:
            self._bar.close()
