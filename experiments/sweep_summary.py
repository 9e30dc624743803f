"""The end of a multirun sweep: every child still RUNNING is ended truthfully, the parent gets the sweep's summary
(the best child by its ``val/best_loss``, the lowest ``val/loss`` during the run, logged as the parent's
``val/best_loss``; its swept values as ``best.*`` params) and its report (``report/report.html`` and figures,
:mod:`charrnn_experiments.sweep_report`), and the console a leaderboard, the parent run id and the MLflow UI address
of the experiment's runs table. The sweep callback ends a sweep this way, and so does charrnn-end-sweep for a sweep
whose process is gone."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

from charrnn.train import METRIC_BEST_VAL_LOSS, StopReason
from charrnn_experiments import tracking
from charrnn_experiments.store import Store
from charrnn_experiments.sweep_jobs import TAG_JOBS, read_sweep


def job_run(client, record: dict, job_num: int):
    """The run of job ``job_num`` of the sweep whose parent is ``record``, if it made one."""
    runs = client.search_runs(
        [record["experiment_id"]],
        filter_string=tracking.children_filter(record["run_id"], f"tags.`{tracking.TAG_JOB}` = '{job_num}'"),
    )
    return runs[0] if runs else None


def parent_store(sweep_dir: Path) -> tuple[dict[str, str], Any]:
    """The sweep's parent record (written when it started) and a client of the store it lives in."""
    record = tracking.read_parent(sweep_dir)
    return record, Store(record["tracking_uri"], None).client()


def _last_evaluation(client, run) -> int | None:
    """The last iteration the run was evaluated at (its last val/loss step); None if it never was."""
    history = client.get_metric_history(run.info.run_id, "val/loss")
    return max(m.step for m in history) if history else None


def end_sweep(
    sweep_dir: Path,
    record: dict[str, str] | None = None,
    closed: str | None = None,
    signum: int | None = None,
    deaths: dict[int, str] | None = None,
) -> int:
    """End every run of the sweep truthfully, summarise it on the parent and print the leaderboard.

    ``record``: the parent's record, when not read from ``sweep_dir``; ``closed``: why a sweep whose process is
    gone is ended from outside (charrnn-end-sweep): the parent and the children still RUNNING end KILLED.
    ``signum``: the signal that stopped the sweep, if one did; ``deaths``: job number -> how its process died.
    Returns the number of jobs that did not finish: a job a launcher retried (Ray does, after its worker
    died) counts as finished when one of its runs finished.
    """
    record = record or tracking.read_parent(sweep_dir)
    if record is None:
        return 0
    client = Store(record["tracking_uri"], None).client()
    parent_id = record["run_id"]
    parent = client.get_run(parent_id)
    keys = read_sweep(sweep_dir).get("keys") or []
    children = client.search_runs(
        [record["experiment_id"]], filter_string=tracking.children_filter(parent_id), max_results=10_000
    )
    rows = []
    for child in children:
        status = child.info.status
        reason = child.data.tags.get(tracking.TAG_REASON, "")
        if status == "RUNNING":  # its job is gone: the sweep stopped it or its process died
            died = (deaths or {}).get(int(child.data.tags.get(tracking.TAG_JOB, -1)), "for no known reason")
            if closed is not None:
                status, reason = "KILLED", closed
            elif signum is not None:
                status = "KILLED"
                reason = f"the sweep was stopped ({signal.Signals(signum).name}) before this job ended its run"
            else:
                status, reason = "FAILED", f"its job process died ({died}) before ending the run"
            client.set_tag(child.info.run_id, tracking.TAG_REASON, reason)
            client.set_terminated(child.info.run_id, status=status)
        rows.append((status, tracking.best_val_loss(child), _last_evaluation(client, child), child, reason))
    # a job finished when its run did; only runs with a validation loss can be ranked (a preset without a
    # validation split, like minchar, has none)
    finished = [r for r in rows if r[0] == "FINISHED"]
    ranked = [r for r in finished if r[1] is not None and math.isfinite(r[1])]
    capped = [r for r in rows if _hit_time_cap(r[3])]
    summary = {
        "charrnn.children": str(len(rows)),
        "charrnn.finished": str(len(finished)),
        "charrnn.failed": str(len(rows) - len(finished)),
        "charrnn.hit_time_cap": str(len(capped)),
    }
    for key, value in summary.items():
        client.set_tag(parent_id, key, value)
    if ranked:
        _, best_loss, _, best, _ = min(ranked, key=lambda r: r[1])
        client.set_tag(parent_id, tracking.TAG_BEST_CHILD, best.info.run_id)
        client.log_metric(parent_id, METRIC_BEST_VAL_LOSS, best_loss)
        tracking.log_params(
            client, parent_id, {f"best.{k}": best.data.params[k] for k in keys if k in best.data.params}
        )
    if closed is not None or signum is not None:
        client.set_tag(parent_id, tracking.TAG_REASON, closed or f"stopped by {signal.Signals(signum).name}")
        status = "KILLED"
    else:
        status = "FINISHED" if finished else "FAILED"
    client.set_terminated(parent_id, status=status)
    unfinished = int(parent.data.tags.get(TAG_JOBS, len(rows))) - _jobs_in(finished)
    _print_leaderboard(parent, rows, ranked, capped, record, parent_id, status, unfinished)
    # imported here: plotly and the figures cost a second that a sweep's start and its jobs need not pay
    from charrnn_experiments.sweep_report import report_or_say_why

    report_or_say_why(client, parent_id, sweep_dir)
    return unfinished


def _hit_time_cap(run) -> bool:
    return run.data.tags.get(tracking.TAG_STOP) == StopReason.MAX_SECONDS.value


def _jobs_in(rows) -> int:
    """How many distinct jobs these runs belong to (a retried job has several runs)."""
    return len({row[3].data.tags.get(tracking.TAG_JOB, row[3].info.run_id) for row in rows})


def _print_leaderboard(parent, rows, ranked, capped, record, parent_id, status, unfinished) -> None:
    planned = int(parent.data.tags.get(TAG_JOBS, len(rows)))
    counts = {state: sum(r[0] == state for r in rows) for state in ("FINISHED", "FAILED", "KILLED")}
    counts["not started"] = max(0, planned - len(rows))
    lines = [
        f"\nsweep {parent.info.run_name}: {status}, "
        + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
        + f" of {planned} jobs",
        f"  {'status':<9} {METRIC_BEST_VAL_LOSS:>13} {'iters':>6}  job",
    ]
    for state, best, iters, child, reason in sorted(rows, key=lambda r: (r not in ranked, r[1] or 0.0)):
        loss = f"{best:.4f}" if best is not None else "-"
        note = (
            "  (hit the train.max_seconds safety cap)"
            if _hit_time_cap(child)
            else (f"  ({reason})" if state != "FINISHED" and reason else "")
        )
        lines.append(f"  {state:<9} {loss:>13} {iters if iters is not None else '-':>6}  {child.info.run_name}{note}")
    if capped:
        lines.append(
            f"{len(capped)} job(s) stopped on the wall-clock safety cap before train.max_iters: they did "
            "less work than the others; raise train.max_seconds to compare at equal iterations"
        )
    if ranked:
        best = min(ranked, key=lambda r: r[1])
        lines.append(f"best (lowest val/loss during the run): {best[3].info.run_name}  {best[1]:.4f} nats/char")
    if unfinished:
        lines.append(f"{unfinished} of {planned} jobs did not finish")
    lines.append(f"parent run id: {parent_id}")
    lines.append(f"see it: {Store(record['tracking_uri'], None).ui_address(record['experiment_id'])}")
    print("\n".join(lines), flush=True)
