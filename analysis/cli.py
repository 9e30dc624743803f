"""Console scripts ``charrnn-analyze`` and ``charrnn-compare``, with Hydra-style ``key=value`` arguments.

Plain ``key=value`` parsing rather than a Hydra app: these commands read runs, they do not compose configs, and
Hydra's per-invocation output folders would only be in the way. Every bad input ends as one ``error: ...`` line
on stderr and exit status 2, like ``charrnn-train``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from mlflow.exceptions import MlflowException

from charrnn.errors import CharRNNError

from .compare import leaderboard, load_runs, plot_curves, plot_metric_vs_params, plot_param_heatmap, swept_params
from .errors import AnalysisError
from .features import get_feature
from .record import Recording, record
from .report import ReportOptions, write_report
from .sources import choose_text, model_from_checkpoint, model_from_run, open_client
from .tables import markdown_table, write_table

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Arg:
    type: Callable[[str], Any]
    default: Any
    help: str


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ValueError(value)


def _list(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def _range(value: str) -> tuple[int, int]:
    start, end = value.split(":")
    return int(start), int(end)


ANALYZE_ARGS = {
    "run": Arg(str, None, "MLflow run id: analyse its best checkpoint, log the results to it"),
    "checkpoint": Arg(str, None, "a checkpoint .npz instead of a run"),
    "recording": Arg(str, None, "reuse a recording .npz instead of running the model again"),
    "text": Arg(str, None, "analyse this text file (default: the run's validation split)"),
    "string": Arg(str, None, "analyse this literal text (\\n and \\t understood)"),
    "data": Arg(str, None, "analyse the validation split of this corpus: pystdlib | tinyshakespeare | file"),
    "data_path": Arg(str, None, "the file for data=file"),
    "start": Arg(int, 0, "first character of the text to record"),
    "length": Arg(int, 20000, "how many characters to record"),
    "chunk": Arg(int, 1024, "characters per forward pass while recording (bounds memory)"),
    "dtype": Arg(str, "float16", "stored activations: float16 | float32"),
    "features": Arg(_list, None, "comma-separated feature names (default: all)"),
    "states": Arg(_list, None, "comma-separated states to rank, e.g. h,c (default: c for LSTM, else h)"),
    "top_k": Arg(int, 5, "units listed per feature"),
    "units": Arg(_list, [], "extra units to draw, e.g. c.0:17,h.1:3"),
    "select": Arg(_range, None, "LSTMVis selection: START:END of the recorded text"),
    "margin": Arg(int, None, "characters around the selection that must be off (default: its length)"),
    "threshold": Arg(float, 0.3, "'on' threshold for the selection"),
    "out": Arg(str, None, "output folder (default: outputs/analysis/<run id or checkpoint name>)"),
    "tracking_uri": Arg(str, None, "MLflow store (default: as charrnn-train, sqlite:///mlflow.db here)"),
    "log": Arg(_bool, True, "log the results as artifacts of the run (run= only)"),
}

COMPARE_ARGS = {
    "experiment": Arg(str, None, "MLflow experiment name (required)"),
    "parent": Arg(str, None, "a sweep's parent run id: compare its children only, log figures to it"),
    "color_by": Arg(str, None, "param that colours the curves (default: the first swept param)"),
    "heatmap": Arg(_list, None, "two params X,Y for the heatmap (default: the first two swept params)"),
    "top": Arg(int, 10, "rows in the printed leaderboard"),
    "out": Arg(str, None, "output folder (default: outputs/compare/<experiment>)"),
    "tracking_uri": Arg(str, None, "MLflow store (default: as charrnn-train, sqlite:///mlflow.db here)"),
}


def parse_args(argv: list[str], spec: dict[str, Arg]) -> dict[str, Any]:
    values = {name: arg.default for name, arg in spec.items()}
    for item in argv:
        key, sep, raw = item.partition("=")
        key = key.lstrip("+")  # accept Hydra's "+key=value" spelling too
        if not sep:
            raise AnalysisError(f"expected key=value, got {item!r} (try help)")
        if key not in spec:
            raise AnalysisError(f"unknown argument {key!r} (known: {', '.join(spec)})")
        try:
            values[key] = spec[key].type(raw)
        except ValueError:
            raise AnalysisError(f"bad value for {key}: {raw!r} ({spec[key].help})") from None
    return values


def usage(command: str, spec: dict[str, Arg]) -> str:
    lines = [f"usage: {command} key=value ..."]
    lines += [f"  {name:<13} {arg.help}" + (f" [{arg.default}]" if arg.default not in (None, []) else "")
              for name, arg in spec.items()]
    return "\n".join(lines)


def _main(command: str, spec: dict[str, Arg], body: Callable[[dict], None], argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the terminal output readable
    if any(a in ("help", "-h", "--help") for a in argv):
        print(usage(command, spec))
        return 0
    try:
        body(parse_args(argv, spec))
    except CharRNNError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MlflowException as err:
        print(f"error: MLflow: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _analyze(args: dict) -> None:
    sources = [name for name in ("run", "checkpoint", "recording") if args[name]]
    if len(sources) != 1:
        raise AnalysisError("give exactly one of run=<run id>, checkpoint=<file>, recording=<file>")
    for name in args["features"] or []:
        get_feature(name)  # fail on a typo before minutes of recording, not after
    client = open_client(args["tracking_uri"]) if args["run"] else None
    model = None
    if args["run"]:
        model = model_from_run(client, args["run"])
    elif args["checkpoint"]:
        model = model_from_checkpoint(args["checkpoint"])
    name = args["run"] or Path(args["checkpoint"] or args["recording"]).stem
    out = Path(args["out"] or Path("outputs") / "analysis" / name)

    if model is None:
        recording = Recording.load(args["recording"])
    else:
        text, offset, description = choose_text(model, args["text"], args["string"], args["data"],
                                                args["data_path"])
        start, length = args["start"], args["length"]
        if not 0 <= start < len(text) or length < 1:
            raise AnalysisError(f"start={start} length={length} is out of bounds for a text of {len(text)} characters")
        piece = text[start : start + length]
        if args["select"] and not 0 <= args["select"][0] < args["select"][1] <= len(piece):
            raise AnalysisError(f"select={args['select'][0]}:{args['select'][1]} is out of bounds for the "
                                f"{len(piece)} recorded characters")
        probe = record(model.params, model.config, model.vocab, piece[:1])  # one character: names every unit
        for label in args["units"]:
            probe.unit(label)
        print(f"recording {len(piece)} characters of {description} ...")
        recording = record(model.params, model.config, model.vocab, piece, args["chunk"], args["dtype"],
                           offset + start, dict(model.source, text_source=description))
        recording.save(out / "recording.npz")

    options = ReportOptions(features=args["features"], top_k=args["top_k"], states=args["states"],
                            units=args["units"], select=args["select"], margin=args["margin"],
                            threshold=args["threshold"])
    report = write_report(recording, out, options, model)
    print(markdown_table(summary(report.top_units)), end="")
    if report.selection is not None:
        print(f"\nunits on inside {options.select[0]}:{options.select[1]} and off around it:")
        print(markdown_table(report.selection) if len(report.selection) else "(none)\n", end="")
    print(f"wrote {out}/ (recording.npz, top_units.csv/.md, figures/, explorer.html)")
    if args["run"] and args["log"]:
        client.log_artifacts(args["run"], str(out), "analysis")
        print(f"logged to run {args['run']} under artifacts/analysis/")


def summary(top_units: pd.DataFrame) -> pd.DataFrame:
    """One row per feature for the terminal: its top units as ``unit (score, sign)``; the files keep it all."""
    rows = [{"feature": feature, "kind": group["kind"].iloc[0],
             "top units (score, sign)": ", ".join(f"{r.unit} ({r.score:.2f}{'+' if r.sign > 0 else '-'})"
                                                  for r in group.itertuples())}
            for feature, group in top_units.groupby("feature", sort=False)]
    return pd.DataFrame(rows)


def analyze_main(argv: list[str] | None = None) -> int:
    return _main("charrnn-analyze", ANALYZE_ARGS, _analyze, argv)


def _compare(args: dict) -> None:
    if not args["experiment"]:
        raise AnalysisError("experiment=<name> is required")
    client = open_client(args["tracking_uri"])
    table, histories = load_runs(client, args["experiment"], args["parent"])
    swept = swept_params(table)
    out = Path(args["out"] or Path("outputs") / "compare" / args["experiment"])
    files = list(write_table(table, out / "runs"))
    print(markdown_table(leaderboard(table, args["top"])), end="")
    if swept:
        files.append(plot_curves(table, histories, args["color_by"] or swept[0], out / "curves.png"))
        files.append(plot_metric_vs_params(table, swept, out / "val_loss_vs_params.png"))
    else:
        print("(the runs share every param: no swept-param figures)")
    heatmap = args["heatmap"] or (swept[:2] if len(swept) >= 2 else None)
    if heatmap:
        if len(heatmap) != 2:
            raise AnalysisError(f"heatmap needs two params X,Y, got {','.join(heatmap)}")
        files.append(plot_param_heatmap(table, heatmap[0], heatmap[1], out / "heatmap.png"))
    print(f"wrote {len(files)} files to {out}/ ({len(table)} runs)")
    if args["parent"]:
        for path in files:
            client.log_artifact(args["parent"], str(path), "compare")
        print(f"logged to parent run {args['parent']} under artifacts/compare/")


def compare_main(argv: list[str] | None = None) -> int:
    return _main("charrnn-compare", COMPARE_ARGS, _compare, argv)
