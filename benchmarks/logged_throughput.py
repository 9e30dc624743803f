"""What a `charrnn-train` run logged about its speed, read back from the store (shared by the benchmarks)."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run


def training_steps(client: MlflowClient, run: Run) -> tuple[int, float]:
    """(characters trained, seconds spent in training steps) over the run's logged windows. Each point of
    ``throughput/chars_per_s`` is characters per second over the iterations since the previous point."""
    chars_per_iter = int(run.data.params["train.seq_length"]) * int(run.data.params["train.batch_size"])
    history = sorted(client.get_metric_history(run.info.run_id, "throughput/chars_per_s"), key=lambda m: m.step)
    seconds, previous = 0.0, 0
    for point in history:
        seconds += (point.step - previous) * chars_per_iter / point.value
        previous = point.step
    return previous * chars_per_iter, seconds
