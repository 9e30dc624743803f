"""The sweep's own report on its parent run, made when the sweep ends (also after failed jobs or a stop): read the
children from the store, write the report (:mod:`charrnn_analysis.sweep_report`) into the sweep's folder and log
it on the parent under ``report/``. ``charrnn-compare parent=<id>`` makes the same report again."""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow import MlflowClient

from charrnn_analysis.sweep_report import REPORT_PAGE, write_sweep_report
from charrnn_experiments.faults import first_line
from charrnn_experiments.runs import load_runs

REPORT_DIR = "report"  # the folder of the sweep's folder, and of the parent's artifacts


def report_on_parent(client: MlflowClient, parent_id: str, sweep_dir: Path) -> Path:
    """Write the report of ``parent_id``'s children into ``sweep_dir/report/`` and log it on the parent; returns
    the page."""
    # no unit scores: their download needs threads, which a sweep stopped by a signal, ending in its exit
    # handlers, can no longer start
    table, histories, _ = load_runs(client, None, parent_id, unit_scores=False)
    out = sweep_dir / REPORT_DIR
    title = f"sweep report: {client.get_run(parent_id).info.run_name}"
    files = write_sweep_report(table, histories, out, title)
    for path in files:
        client.log_artifact(parent_id, str(path), REPORT_DIR)
    return out / REPORT_PAGE


def report_or_say_why(client: MlflowClient, parent_id: str, sweep_dir: Path) -> None:
    """The report, or one line saying why there is none: the report never changes how the sweep ended."""
    try:
        page = report_on_parent(client, parent_id, sweep_dir)
    except Exception as err:  # whatever went wrong, the sweep's exit status stands
        print(f"warning: no sweep report: {type(err).__name__}: {first_line(err)}", file=sys.stderr, flush=True)
        return
    print(f"report: {page} (on the parent run under {REPORT_DIR}/{REPORT_PAGE})", flush=True)
