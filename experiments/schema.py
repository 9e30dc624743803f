"""The config schema of the four commands: Hydra structured configs registered in Hydra's ConfigStore.

The engine's dataclasses are the schema of the ``model.*``, ``optim.*`` and ``train.*`` keys: their fields,
types and defaults are read from :class:`charrnn.model.ModelConfig`, :class:`charrnn.train.TrainConfig` and
:class:`charrnn.train.OptimConfig` (``optim.schedule.*``: :class:`charrnn.schedule.ScheduleConfig`), so each
default is written once (in the engine) and OmegaConf rejects a value of the wrong type while Hydra composes the
config, naming the key. The engine's ``__post_init__`` checks ranges.
The harness's own keys (``data``, ``tracking``, ``record`` and train's harness-only keys) are declared here, and
charrnn-sample, charrnn-analyze and charrnn-compare share them. ``charrnn/`` never imports Hydra or OmegaConf: the
dataclasses are registered from here (``charrnn_conf`` imports this module, so whoever composes a config has them).

Each command's YAML lists its schema first in its defaults, so every group file and preset merges onto these
types; YAML files only choose variants (a cell, an optimizer and its lr, a corpus) or state a preset's values.
A config Hydra cannot compose ends as one ``error:`` line (:func:`run_reporting_config_errors`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import signal
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from charrnn.model import ModelConfig
from charrnn.schedule import ScheduleConfig
from charrnn.train import OptimConfig, TrainConfig
from charrnn_experiments.faults import exit_with_error, local_fault, unwritable, unwritable_files_line

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class SignalStop(KeyboardInterrupt):
    """A stop by ``signum`` that no job's own handler took: the command exits 128 + signum, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


def engine_default(engine_class: type, name: str):
    """The default of one field of an engine dataclass (where a harness key stands for it)."""
    return next(f.default for f in dataclasses.fields(engine_class) if f.name == name)


def schema_fields(
    source: type, omit: tuple[str, ...] = (), nested: dict[str, type] | None = None
) -> list[tuple[str, Any, dataclasses.Field]]:
    """``source``'s fields with their types and defaults, minus ``omit``, for ``make_dataclass``; a field named in
    ``nested`` holds an engine dataclass and gets the given schema copy of it instead.

    A copy rather than a subclass: the engine's ``__post_init__`` must not run on the schema (it would reject
    ``vocab_size=0``, which only the data can set), and omitted fields must not exist at all.
    """
    types = typing.get_type_hints(source)
    nested = nested or {}
    return [
        (f.name, nested[f.name], field(default_factory=nested[f.name]))
        if f.name in nested
        else (
            f.name,
            types[f.name],
            field(default=f.default)
            if f.default is not dataclasses.MISSING
            else field(default_factory=f.default_factory),
        )
        for f in dataclasses.fields(source)
        if f.name not in omit
    ]


def schema_class(name: str, fields: list[tuple[str, Any, dataclasses.Field]]) -> type:
    """A dataclass of ``fields`` that lives in this module, so a config holding it pickles (a parallel launcher
    sends the config to each job's process)."""
    made = make_dataclass(name, fields)
    made.__module__ = __name__
    return made


# ModelConfig.vocab_size comes from the data. ModelConfig.dtype is the public key train.dtype, where it has always
# been: it is how the run computes (weights, optimizer state, gradients), chosen per run like the other train keys.
ModelSchema = schema_class("ModelSchema", schema_fields(ModelConfig, omit=("vocab_size", "dtype")))
ScheduleSchema = schema_class("ScheduleSchema", schema_fields(ScheduleConfig))
OptimSchema = schema_class("OptimSchema", schema_fields(OptimConfig, nested={"schedule": ScheduleSchema}))


@dataclass
class TrainHarnessKeys:
    """The ``train.*`` keys that are the harness's, not the engine's TrainConfig."""

    dtype: str = engine_default(ModelConfig, "dtype")  # float64 | float32: ModelConfig.dtype
    init_from: str | None = None  # .npz of initial weights (the gist's Wxh, Whh, Why, bh, by)
    # an MLflow run id: continue that run from its last stored checkpoint, with its own config (only
    # max_iters, max_seconds, target_val_loss may change); or a run's local checkpoint .npz: continue from it
    resume: str | None = None
    val_fraction: float = 0.1  # the share of the text held out as validation text (charrnn.data.split_corpus)


TrainSchema = schema_class("TrainSchema", schema_fields(TrainConfig) + schema_fields(TrainHarnessKeys))


@dataclass
class DataSchema:
    """Which text: a group file (conf/data/*.yaml) names a corpus; ``path`` is a file for ``data=file``."""

    name: str | None = None
    path: str | None = None


@dataclass
class TrackingSchema:
    # None: $MLFLOW_TRACKING_URI when set, else the embedded store sqlite:///mlflow.db + ./mlartifacts in the
    # directory the command was started from (never inside Hydra's output folder)
    uri: str | None = None


@dataclass
class TrainTrackingSchema(TrackingSchema):
    experiment: str = "charrnn"  # the MLflow experiment a run (or a sweep's parent) goes to


@dataclass
class RecordSchema:
    """What a recording of the hidden state covers: charrnn-train records every FINISHED run with it (artifacts
    analysis/recording.npz and analysis/top_units.csv), and charrnn-analyze uses the same keys."""

    enabled: bool = True  # charrnn-train only: false skips the end-of-run recording
    start: int = 0  # first character of the validation split: every run on the same data records the same slice
    length: int = 10_000  # characters recorded (fewer when the validation split is shorter)
    chunk: int = 1024  # characters per forward pass while recording (bounds memory)
    dtype: str = "float16"  # stored activations: float16 | float32


@dataclass
class TrainAppSchema:
    model: ModelSchema = field(default_factory=ModelSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    data: DataSchema = field(default_factory=DataSchema)
    tracking: TrainTrackingSchema = field(default_factory=TrainTrackingSchema)
    record: RecordSchema = field(default_factory=RecordSchema)
    # values a preset computes other keys from (paper_cells' hidden size per budget); the engine never sees them
    study: dict[str, Any] | None = None


# The other commands' own keys are typed Any: each command checks them itself (a list or an 'a,b' string, a run id
# Hydra may read as a number), with messages of its own; their shared groups are the typed ones above.


@dataclass
class SampleAppSchema:
    run: Any = None  # an MLflow run id of charrnn-train (looked up in tracking.uri)
    checkpoint: Any = None  # or a checkpoint file
    which: Any = "best"  # best | latest: which of the run's checkpoints (best falls back to latest if absent)
    length: Any = 500
    temperature: Any = 1.0
    top_k: Any = None
    prime: Any = ""
    argmax: Any = False
    seed: Any = 0
    tracking: TrackingSchema = field(default_factory=TrackingSchema)


@dataclass
class AnalyzeAppSchema:
    run: Any = None  # an MLflow run id: analyse its best checkpoint (else its latest), log the results to it
    checkpoint: Any = None  # or a checkpoint .npz
    recording: Any = None  # or reuse a recording .npz without running a model
    text: Any = None  # record this text file instead of the model's validation split
    string: Any = None  # or this literal text (\n and \t understood)
    # data=<corpus> or data.name/data.path: analyse that corpus's validation split; null: the model's own corpus
    data: DataSchema = field(default_factory=DataSchema)
    features: Any = None  # list of feature names, e.g. [in_string,bracket_depth]; null: all
    states: Any = None  # states to rank, e.g. [h,c]; null: c for an LSTM, else h
    top_k: Any = 5  # units listed per feature
    units: Any = field(default_factory=list)  # extra units to draw, e.g. [c.0:17,h.1:3]
    select: Any = None  # LSTMVis selection START:END of the recorded text, e.g. 120:160
    margin: Any = None  # characters around the selection that must be off (null: its length)
    threshold: Any = 0.3  # 'on' threshold for the selection
    control: Any = True  # rank again on two controls (characters shuffled within lines; an untrained model)
    out: Any = None  # output folder; null: outputs/analysis/<run id or file name>
    log: Any = True  # log the results as artifacts of the run (run= only)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)
    record: RecordSchema = field(default_factory=RecordSchema)


@dataclass
class CompareTrackingSchema(TrackingSchema):
    experiment: str | None = None  # the MLflow experiment; null: the parent run's (required without parent=)


@dataclass
class CompareAppSchema:
    parent: Any = None  # a sweep's parent run id: compare its children, log the table and figures to it
    color_by: Any = None  # param that colours the curves and the feature-score figure; null: the first swept param
    heatmap: Any = None  # two params [X,Y] for the heatmap; null: the first two swept params
    top: Any = 10  # rows in the printed leaderboard
    out: Any = None  # output folder; null: outputs/compare/<experiment>
    tracking: CompareTrackingSchema = field(default_factory=CompareTrackingSchema)


@dataclass
class EndSweepAppSchema:
    parent: Any = None  # the parent run id of the sweep to end
    tracking: TrackingSchema = field(default_factory=TrackingSchema)


# Each command's YAML (conf/<name>.yaml) lists its schema first in its defaults.
for schema_name, schema in {
    "train_schema": TrainAppSchema,
    "sample_schema": SampleAppSchema,
    "analyze_schema": AnalyzeAppSchema,
    "compare_schema": CompareAppSchema,
    "end_sweep_schema": EndSweepAppSchema,
}.items():
    ConfigStore.instance().store(name=schema_name, node=schema)


def config_error_line(err: Exception, schema: type) -> str:
    """One line for a config Hydra could not compose with ``schema`` (the command's): the key and what is wrong
    with it; an unknown key gets the nearest of the schema's keys, which are all the valid ones."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return unknown_key_line(key, config_keys(OmegaConf.to_container(OmegaConf.structured(schema))))
    text = str(cause).strip().splitlines()[0]
    if isinstance(err, MissingConfigException) and err.options:
        return f"{text}: choose one of {', '.join(err.options)}"
    if isinstance(err, OverrideParseException):
        return f"{err.override}: {text} (key=value, Hydra's override syntax)"
    return f"{key}: {text}" if key else text


def unknown_key_line(key: str, valid: list[str]) -> str:
    # a key given without its group (start= for record.start) is the one key of that name, else the nearest spelling
    same_name = [name for name in valid if name.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    nearest = same_name if len(same_name) == 1 else difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if nearest:
        return f"unknown key {key}: did you mean {nearest[0]}? (--help lists every key)"
    top = [name for name in valid if "." not in name]
    return f"unknown key {key}: the top-level keys are {', '.join(top)} (--help lists every key)"


def config_keys(tree: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config, sections included (``model`` and ``model.cell``), leaving out Hydra's own."""
    keys = []
    for name, value in tree.items():
        if name != "hydra":
            keys.append(f"{prefix}{name}")
            keys += config_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else []
    return keys


def boolean_keys(schema: type, prefix: str = "") -> list[str]:
    """The dotted keys of ``schema`` typed bool."""
    keys = []
    for name, kind in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(kind):
            keys += boolean_keys(kind, f"{prefix}{name}.")
        elif kind is bool:
            keys.append(f"{prefix}{name}")
    return keys


def boolean_override_error(args: list[str], schema: type) -> str | None:
    """What is wrong with a command-line value of a bool key other than true or false, or None.

    Hydra's grammar reads only true and false as booleans, but OmegaConf would still turn ``yes``, ``on`` or
    ``1`` into True for a bool field: a typo'd value must not silently mean true."""
    keys = set(boolean_keys(schema))
    candidates = [arg for arg in args if "=" in arg and not arg.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except OverrideParseException:
        return None  # Hydra reports bad syntax itself
    for override in overrides:
        if override.key_or_group not in keys or override.is_delete():
            continue
        if override.is_choice_sweep():
            values = list(override.sweep_iterator())
        else:  # a range or interval sweep is never a bool: show it as typed
            values = [override.input_line.partition("=")[2] if override.is_sweep_override() else override.value()]
        for value in values:
            if not isinstance(value, bool):
                shown = "null" if value is None else repr(value)
                return f"{override.key_or_group} must be true or false, got {shown}"
    return None


def run_reporting_config_errors(app: Callable[[], None], schema: type) -> None:
    """Run a Hydra app whose config has ``schema``; a config that cannot be composed (an unknown key, a value
    of the wrong type, an unknown group option, bad override syntax) ends as one ``error: ...`` line and exit
    status 2 rather than Hydra's multi-line report. A user's own HYDRA_FULL_ERROR=1 keeps Hydra's full report."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        app()
        return
    problem = boolean_override_error(sys.argv[1:], schema)
    if problem:
        exit_with_error(problem)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises what it would otherwise print
    try:
        app()
    except (HydraException, OmegaConfBaseException) as err:
        exit_with_error(config_error_line(err, schema))
    except KeyboardInterrupt as err:  # Ctrl-C where the command has no stop of its own (loading, analysing)
        print(f"stopped: {str(err) or 'interrupted'}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code if isinstance(err, SignalStop) else EXIT_INTERRUPTED)
    except Exception as err:
        # a read-only or full working folder: Hydra cannot make its output folder (and says so only by a
        # later missing file)
        fault = local_fault(err) or unwritable(Path.cwd())
        if fault is None:
            raise
        exit_with_error(unwritable_files_line(fault))
