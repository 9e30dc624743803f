"""What charrnn sets of MLflow's UI through the tracking API: the tags every experiment it makes carries (its
kind, its primary metric, a saved view of its runs page whose charts start with the losses)."""

from __future__ import annotations

import base64
import json
import time
import zlib

# MLflow 3's marker of an experiment's kind (the UI's ExperimentKind), set for other clients and UI versions that
# read it. MLflow 3.17's UI does not: it takes the GenAI / model-training view from the address's
# workflowType=machine_learning (see store.Store.ui_address), else from what the browser stored when its user last
# flipped the view's toggle (localStorage mlflow.workflowType_v1), else GenAI. A run's link drops workflowType, so in
# a fresh browser a run page opens in the GenAI view until the user picks Model training once.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow's primary metric of an experiment and its direction (the two tags mlflow.tracking.fluent's
# _set_experiment_primary_metric writes). MLflow 3.17's UI reads the name only, in the experiment page's chart view,
# where it makes sure a val/loss chart is drawn; it orders nothing by it. The direction is for other readers.
TAG_PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"
TAG_PRIMARY_METRIC_GREATER_IS_BETTER = "mlflow.experiment.primaryMetric.greaterIsBetter"
EXPERIMENT_TAGS = {
    TAG_EXPERIMENT_KIND: EXPERIMENT_KIND,
    TAG_PRIMARY_METRIC: "val/loss",
    TAG_PRIMARY_METRIC_GREATER_IS_BETTER: "False",
}  # every experiment charrnn makes; see above
# A saved view of the experiment's runs page, as MLflow 3.17's *Views* > *Save as new view* writes it (the tag
# mlflow.sharedViewState.<key>; the address's viewStateShareKey=<key> opens it): its chart view starts with a
# section of train/loss and val/loss, titled so (MLflow's own titles are both "loss"). The UI appends a chart for
# every other metric after it, in sections of its own; isAccordionReordered keeps ours first (else sorted by name).
# Empty charts stay (hideEmptyCharts off): a sweep's parent row, folded, has no losses, and MLflow then leaves the
# two cards in place saying no visible run has data, rather than an empty section above val/best_loss.
SAVED_VIEW_KEY = "charrnn-losses"
TAG_SAVED_VIEW = f"mlflow.sharedViewState.{SAVED_VIEW_KEY}"
SAVED_VIEW_NAME = "charrnn: losses first"
LOSS_CHARTS = ("train/loss", "val/loss")


def saved_view_tag() -> str:
    """The value of :data:`TAG_SAVED_VIEW`: the envelope and the "deflate;" + base64 zlib state of MLflow 3.17's UI
    (module 53787 and its compression helper); the UI's own defaults but for the charts, their sections'
    order and hideEmptyCharts (see TAG_SAVED_VIEW)."""
    section = "charrnn-losses-section"
    charts = [
        {
            "uuid": f"charrnn-{key.replace('/', '-')}",
            "type": "LINE",
            "runsCountToCompare": 10,
            "metricSectionId": section,
            "deleted": False,
            "isGenerated": False,
            "displayName": key,
            "metricKey": key,
            "lineSmoothness": 0,
            "xAxisScaleType": "linear",
            "scaleType": "linear",
            "range": {},
            "xAxisKey": "step",
            "selectedXAxisMetricKey": "",
            "yAxisKey": "metric",
            "yAxisExpressions": [],
            "ignoreOutliers": False,
            "useGlobalXaxisKey": True,
            "useGlobalLineSmoothing": True,
        }
        for key in LOSS_CHARTS
    ]
    state = {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"],
        "columnOrder": [],
        "columnWidths": {},
        "runsHiddenMode": "FIRST_10_RUNS",
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": section,
                "name": "losses",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": True,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": False,
        "groupBy": None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    packed = base64.b64encode(zlib.compress(json.dumps(state, separators=(",", ":")).encode())).decode()
    millis = int(time.time() * 1000)
    return json.dumps(
        {"name": SAVED_VIEW_NAME, "createdAt": millis, "updatedAt": millis, "state": f"deflate;{packed}"},
        separators=(",", ":"),
    )
