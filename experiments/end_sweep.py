"""`charrnn-end-sweep parent=<run id>`: end a sweep whose launching process is gone (killed with -9, its machine
rebooted, the store away at its end), which no sweep can end itself. The parent run ends KILLED with the summary
of the children that finished (the best child, its loss and swept values); children left RUNNING end KILLED.
A sweep whose launching process or any of whose job processes still runs is left alone."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from charrnn.errors import CharRNNError, ConfigError
from charrnn_experiments import tracking
from charrnn_experiments.faults import exit_with_error
from charrnn_experiments.lease import owner_alive
from charrnn_experiments.schema import EndSweepAppSchema, run_reporting_config_errors
from charrnn_experiments.store import Store, use_http_defaults
from charrnn_experiments.sweep_summary import end_sweep

CLOSED_REASON = "ended by charrnn-end-sweep: the sweep's launching process was gone"


def close_sweep(parent_id: str | None, uri: str | None, base_dir: str) -> str | None:
    """End sweep ``parent_id`` if its processes are gone; returns why nothing was done, or None."""
    if not parent_id:
        raise ConfigError(
            "give parent=<the sweep's parent run id> (the sweep printed it as 'parent run id', and "
            "the MLflow UI lists it with its children)"
        )
    store = Store.resolve(uri, base_dir)
    client = store.client(create=False)
    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        raise ConfigError(f"parent={parent_id}: no such run in {store.uri}") from None
    tags = parent.data.tags
    if tracking.TAG_SWEEP not in tags or tracking.TAG_JOB in tags:
        raise ConfigError(f"parent={parent_id}: run {parent.info.run_name!r} is not a sweep's parent run")
    if parent.info.status != "RUNNING":
        return f"sweep {parent_id} has ended already ({parent.info.status}); nothing to do"
    alive = owner_alive(parent)
    if alive:
        raise ConfigError(
            f"sweep {parent_id} is still running ({alive}); stop it with Ctrl-C or kill, and it ends itself"
        )
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=tracking.children_filter(parent_id, "attributes.status = 'RUNNING'")
    )
    for child in children:
        if alive := owner_alive(child):
            raise ConfigError(
                f"sweep {parent_id}'s child {child.info.run_name!r} is still running ({alive}); stop that first"
            )
    record = {"tracking_uri": store.uri, "experiment_id": parent.info.experiment_id, "run_id": parent_id}
    end_sweep(Path(tags[tracking.TAG_SWEEP]), record=record, closed=CLOSED_REASON)
    return None


@hydra.main(version_base="1.3", config_path="pkg://charrnn_conf", config_name="end_sweep")
def app(cfg: DictConfig) -> None:
    try:
        note = close_sweep(
            None if cfg.parent is None else str(cfg.parent), cfg.tracking.uri, HydraConfig.get().runtime.cwd
        )
    except CharRNNError as err:
        exit_with_error(str(err))
    if note:
        print(note, flush=True)


def main() -> None:
    use_http_defaults()
    run_reporting_config_errors(app, EndSweepAppSchema)
