"""Console scripts ``charrnn-analyze`` and ``charrnn-compare``: Hydra apps over ``charrnn_conf/analyze.yaml`` and
``compare.yaml``, with charrnn-train's key names (``tracking.uri``, ``tracking.experiment``, ``data.name``,
``data.path``, ``record.*``).

They read runs and write only to their ``out`` folder: no Hydra output folder or log file (``hydra.run.dir=.``,
``hydra.output_subdir=null``). Every bad input ends as one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import pandas as pd
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from charrnn.checks import check_int, check_number
from charrnn.errors import CharRNNError
from charrnn_analysis.compare import (
    RANK_BY,
    check_param,
    feature_score_columns,
    feature_scores_figure,
    leaderboard,
    param_heatmap_figure,
    swept_params,
)
from charrnn_analysis.control import SCORE_CONVENTION
from charrnn_analysis.errors import AnalysisError
from charrnn_analysis.features import get_feature
from charrnn_analysis.figures import save_figure
from charrnn_analysis.record import Recording, record
from charrnn_analysis.report import ReportOptions, write_report
from charrnn_analysis.sources import choose_text, model_from_checkpoint
from charrnn_analysis.streams import streams_summary, validation_streams
from charrnn_analysis.study import (
    SPREAD_MEANING,
    chosen_settings,
    is_settings_search,
    is_study,
    study_curves_figure,
    study_loss_vs_params_figure,
    study_markdown_table,
    study_table,
)
from charrnn_analysis.sweep_report import REPORT_PAGE, write_sweep_report
from charrnn_analysis.tables import markdown_table, write_table
from charrnn_analysis.trained_run import RecordSettings, record_slice, slice_bounds
from charrnn_experiments.faults import EXIT_BAD_INPUT, first_line, say_error
from charrnn_experiments.runs import CHECKPOINT_PREFERENCE, load_runs, model_from_run, open_client
from charrnn_experiments.schema import AnalyzeAppSchema, CompareAppSchema, run_reporting_config_errors
from charrnn_experiments.store import use_http_defaults


def _names(value) -> list[str]:
    """A list key given as [a,b] (Hydra's list) or as one 'a,b' string."""
    if value is None:
        return []
    if isinstance(value, (list, ListConfig)):
        return [str(v) for v in value]
    return [item for item in str(value).split(",") if item]


def _range(value) -> tuple[int, int] | None:
    """select=START:END (or [START,END]) as two ints."""
    if value is None:
        return None
    parts = _names(value) if isinstance(value, (list, ListConfig)) else str(value).split(":")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise AnalysisError(f"select must be START:END, e.g. select=120:160, got {value!r}") from None
    return start, end


def _optional_list(value) -> list[str] | None:
    return _names(value) or None


def _optional_str(value) -> str | None:
    return None if value is None else str(value)  # Hydra reads string=123 as an int


def _number(cfg: DictConfig, key: str, kind: type, minimum: int = 0):
    """``cfg[key]`` as ``kind`` (None stays None), checked as every numeric key of every command is
    (:mod:`charrnn.checks`): an int at least ``minimum``, or a finite float."""
    value = cfg[key]
    if kind is int:
        check_int(key, value, minimum, allow_none=True)
    else:
        check_number(key, value, allow_none=True)
    return None if value is None else kind(value)


def analyze(cfg: DictConfig) -> Path:
    sources = [name for name in ("run", "checkpoint", "recording") if cfg[name] is not None]
    if len(sources) != 1:
        raise AnalysisError("give exactly one of run=<run id>, checkpoint=<file>, recording=<file>")
    features, units, select = _optional_list(cfg.features), _names(cfg.units), _range(cfg.select)
    for key in ("control", "log"):
        if not isinstance(cfg[key], bool):
            raise AnalysisError(f"{key} must be true or false, got {cfg[key]!r}")
    for name in features or []:
        get_feature(name)  # fail on a typo before minutes of recording, not after
    options = ReportOptions(
        features=features,
        top_k=_number(cfg, "top_k", int, 1),
        states=_optional_list(cfg.states),
        units=units,
        select=select,
        margin=_number(cfg, "margin", int, 0),
        threshold=_number(cfg, "threshold", float),
        control=cfg.control,
    )
    client = open_client(cfg.tracking.uri) if cfg.run is not None else None
    model = None
    if cfg.run is not None:
        model = model_from_run(client, str(cfg.run))
        best = CHECKPOINT_PREFERENCE[0]
        if Path(model.source["checkpoint"]).name != best:
            print(
                f"run {cfg.run} has no {best} (it never evaluated on validation text): "
                f"analysing its {model.source['checkpoint']}"
            )
    elif cfg.checkpoint is not None:
        model = model_from_checkpoint(str(cfg.checkpoint))
    name = str(cfg.run) if cfg.run is not None else Path(str(cfg.checkpoint or cfg.recording)).stem
    out = Path(str(cfg.out)) if cfg.out is not None else Path("outputs") / "analysis" / name

    streams = None
    if model is None:
        recording = Recording.load(str(cfg.recording))
    else:
        settings = RecordSettings.from_config(cfg.record)
        text, offset, description = choose_text(
            model,
            _optional_str(cfg.text),
            _optional_str(cfg.string),
            _optional_str(cfg.data.name),
            _optional_str(cfg.data.path),
        )
        if cfg.text is None and cfg.string is None:  # a validation split: how val/loss splits over its streams
            streams = validation_streams(model, text, offset)
        probe = record(model.params, model.config, model.vocab, text[:1])  # one character names every unit
        for label in units:
            probe.unit(label)
        start, end = slice_bounds(len(text), settings)
        recorded = end - start
        if select and not 0 <= select[0] < select[1] <= recorded:
            raise AnalysisError(
                f"select={select[0]}:{select[1]} is out of bounds for the {recorded} recorded characters"
            )
        print(f"recording {recorded} characters of {description} ...")
        recording = record_slice(
            model.params, model.config, model.vocab, text, offset, settings, dict(model.source, text_source=description)
        )
        recording.save(out / "recording.npz")

    report = write_report(recording, out, options, model)
    if streams is not None:
        write_table(streams, out / "val_streams")
        print(streams_summary(streams, offset), end="")
    print(markdown_table(summary(report.top_units)), end="")
    if report.selection is not None:
        print(f"\nunits on inside {select[0]}:{select[1]} and off around it:")
        print(markdown_table(report.selection) if len(report.selection) else "(none)\n", end="")
    if report.control is not None:
        print(f"\nbest unit per feature against the controls ({SCORE_CONVENTION}):")
        print(markdown_table(report.control), end="")
    elif options.control:
        print("\n(no controls: a recording= has no model to run on shuffled text)")
    if report.saturation is not None:
        print("\ngate saturation, mean over units:")
        print(markdown_table(report.saturation), end="")
    print(
        f"wrote {out}/ (recording.npz, top_units.csv/.md, figures/, explorer.html"
        + (", control.csv/.md" if report.control is not None else "")
        + (", gate_saturation.csv/.md" if report.saturation is not None else "")
        + (", val_streams.csv/.md" if streams is not None else "")
        + ")"
    )
    if cfg.run is not None and cfg.log:
        client.log_artifacts(str(cfg.run), str(out), "analysis")
        print(f"logged to run {cfg.run} under artifacts/analysis/")
    return out


def summary(top_units: pd.DataFrame) -> pd.DataFrame:
    """One row per feature for the terminal: its top units as ``unit (score, sign)``; the files keep it all."""
    rows = [
        {
            "feature": feature,
            "kind": group["kind"].iloc[0],
            "top units (score, sign)": ", ".join(
                f"{r.unit} ({r.score:.2f}{'+' if r.sign > 0 else '-'})" for r in group.itertuples()
            ),
        }
        for feature, group in top_units.groupby("feature", sort=False)
    ]
    return pd.DataFrame(rows)


def compare(cfg: DictConfig) -> Path:
    parent = str(cfg.parent) if cfg.parent is not None else None
    experiment = str(cfg.tracking.experiment) if cfg.tracking.experiment is not None else None
    if parent is None and experiment is None:
        raise AnalysisError("give tracking.experiment=<name> or parent=<sweep parent run id>")
    client = open_client(cfg.tracking.uri)
    table, histories, experiment = load_runs(client, experiment, parent)
    swept = swept_params(table)
    out = Path(str(cfg.out)) if cfg.out is not None else Path("outputs") / "compare" / experiment
    top = _number(cfg, "top", int, 1)
    color_by = str(cfg.color_by) if cfg.color_by is not None else (swept[0] if swept else None)
    if color_by is not None:
        check_param(table, color_by, "to colour by")
    title = f"sweep report: {client.get_run(parent).info.run_name}" if parent else f"experiment {experiment}"
    keys = [color_by, *(k for k in swept if k != color_by)] if color_by else swept  # color_by's figures first
    files = write_sweep_report(table, histories, out, title, keys)  # the report a sweep's end logs on its parent
    print(markdown_table(leaderboard(table, top)), end="")
    if swept:
        if feature_score_columns(table):
            files.append(save_figure(feature_scores_figure(table, color_by), out / "unit_scores_vs_param.png"))
    else:
        print("(the runs share every param: no swept-param figures)")
    heatmap = _names(cfg.heatmap) or (swept[:2] if len(swept) >= 2 else None)
    if heatmap:
        if len(heatmap) != 2:
            raise AnalysisError(f"heatmap needs two params [X,Y], got {','.join(heatmap)}")
        files.append(save_figure(param_heatmap_figure(table, heatmap[0], heatmap[1]), out / "heatmap.png"))
    if is_study(table):
        files += write_study(table, histories, out)
    if is_settings_search(table):
        files.append(write_chosen_settings(table, out))
    print(f"wrote {len(files)} files to {out}/ ({len(table)} runs; the report: {out / REPORT_PAGE})")
    if parent is not None:
        for path in files:
            client.log_artifact(parent, str(path), "compare")
        print(f"logged to parent run {parent} under artifacts/compare/")
    return out


def write_study(table: pd.DataFrame, histories: dict, out: Path) -> list[Path]:
    """The runs repeat configurations over seeds: the paper's table (printed too) and its two figures."""
    study = study_table(table)
    study.to_csv(out / "study.csv", index=False)
    shown = study_markdown_table(study)
    (out / "study.md").write_text(markdown_table(shown), encoding="utf-8")
    files = [out / "study.csv", out / "study.md"]
    print(f"\nstudy: {RANK_BY} per configuration, {SPREAD_MEANING}")
    print(markdown_table(shown), end="")
    files.append(save_figure(study_curves_figure(table, histories, study), out / "study_val_curves.png"))
    files.append(save_figure(study_loss_vs_params_figure(study), out / "study_loss_vs_params.png"))
    return files


def write_chosen_settings(table: pd.DataFrame, out: Path) -> Path:
    """The runs search a study's settings: each model's winning lr and dropout, as the study preset reads them."""
    path = out / "chosen_settings.yaml"
    text = OmegaConf.to_yaml({"study": chosen_settings(table)})
    path.write_text(text, encoding="utf-8")
    print(
        f"\nchosen settings (lowest {RANK_BY} per model), for the study preset's study.lr and study.dropout:\n{text}",
        end="",
    )
    return path


def run_reporting_errors(body: Callable[[DictConfig], object], cfg: DictConfig) -> int:
    """Run a command body; every bad input becomes one ``error:`` line and exit status 2 (returned)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the terminal output readable
    try:
        body(cfg)
    except CharRNNError as err:
        say_error(str(err))
    except MlflowException as err:
        say_error(f"MLflow: {first_line(err)}")
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        say_error(f"{key + ': ' if key else ''}{first_line(err)}")
    else:
        return 0
    return EXIT_BAD_INPUT


@hydra.main(version_base="1.3", config_path="pkg://charrnn_conf", config_name="analyze")
def _analyze_app(cfg: DictConfig) -> None:
    if code := run_reporting_errors(analyze, cfg):
        sys.exit(code)


@hydra.main(version_base="1.3", config_path="pkg://charrnn_conf", config_name="compare")
def _compare_app(cfg: DictConfig) -> None:
    if code := run_reporting_errors(compare, cfg):
        sys.exit(code)


def analyze_main() -> None:
    use_http_defaults()
    run_reporting_config_errors(_analyze_app, AnalyzeAppSchema)


def compare_main() -> None:
    use_http_defaults()
    run_reporting_config_errors(_compare_app, CompareAppSchema)
