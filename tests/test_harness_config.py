"""The Hydra config tree and the tracking helpers, in-process (no training)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.utils import get_class
from mlflow.entities import Metric, Run, RunData, RunInfo
from omegaconf import OmegaConf, read_write

from charrnn.errors import ConfigError
from charrnn.model import ModelConfig
from charrnn.schedule import ScheduleConfig
from charrnn.train import OptimConfig, TrainConfig
from charrnn_experiments.lease import Owner
from charrnn_experiments.schema import TrainAppSchema, boolean_override_error, config_error_line
from charrnn_experiments.store import Store
from charrnn_experiments.sweep_jobs import parallel_jobs, short_name, swept_space
from charrnn_experiments.tracking import best_val_loss, children_filter, flatten
from charrnn_experiments.train import build_trainer, engine_configs
from conftest import compose_cfg

pytestmark = pytest.mark.fast  # the engine and config tests: pytest -m fast -n 2

CONF = Path(__file__).resolve().parents[1] / "conf"

PUBLIC_KEYS = [
    "model.hidden_size",
    "model.num_layers",
    "train.seq_length",
    "train.batch_size",
    "train.max_iters",
    "train.max_seconds",
    "train.seed",
    "train.dtype",
    "train.init_from",
    "train.log_every",
    "train.sample_every",
    "train.eval_every",
    "optim.lr",
    "optim.clip",
    "optim.clip_mode",
    "data.path",
    "tracking.uri",
    "tracking.experiment",
    "model.dropout",
    "optim.weight_decay",
    "optim.schedule.name",
    "optim.schedule.warmup_iters",
    "optim.schedule.step_start",
    "optim.schedule.step_every",
    "optim.schedule.step_factor",
    "optim.schedule.decay_iters",
    "optim.schedule.min_lr_fraction",
    "train.patience",
]


def test_every_public_key_exists_in_the_default_config():
    flat = flatten(dict(__import__("omegaconf").OmegaConf.to_container(compose_cfg())))
    missing = [k for k in PUBLIC_KEYS if k not in flat]
    assert missing == []


def test_default_is_the_bounded_minchar_job_on_pystdlib():
    cfg = compose_cfg()
    assert (cfg.model.cell, cfg.data.name, cfg.train.max_seconds) == ("rnn", "pystdlib", 120.0)
    assert cfg.tracking.uri is None


def test_minchar_preset_is_the_gist():
    cfg = compose_cfg("experiment=minchar")
    model, train, optim = engine_configs(cfg, vocab_size=65)
    assert (model.cell, model.hidden_size, model.num_layers, model.dtype) == ("rnn", 100, 1, "float64")
    assert (train.seq_length, train.batch_size) == (25, 1)
    assert (optim.name, optim.lr, optim.clip, optim.clip_mode) == ("adagrad", 0.1, 5.0, "value")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("optim", ["adagrad", "rmsprop", "adam"])
def test_every_model_and_optimizer_group_maps_onto_the_engine(cell, optim):
    model, _, opt = engine_configs(compose_cfg(f"model={cell}", f"optim={optim}"), vocab_size=10)
    assert (model.cell, opt.name) == (cell, optim)


def test_train_keys_reach_the_engine():
    _, train, _ = engine_configs(
        compose_cfg("train.eval_max_chars=5000", "train.eval_every=7", "train.seed=3"), vocab_size=10
    )
    assert (train.eval_max_chars, train.eval_every, train.seed) == (5000, 7, 3)
    _, train, _ = engine_configs(compose_cfg("train.eval_max_chars=null"), vocab_size=10)
    assert train.eval_max_chars is None


def test_model_keys_reach_the_engine():
    model, _, _ = engine_configs(compose_cfg("model=lstm", "model.dropout=0.25"), vocab_size=10)
    assert (model.cell, model.dropout) == ("lstm", 0.25)
    assert engine_configs(compose_cfg(), vocab_size=10)[0].dropout == 0.0


def test_schedule_weight_decay_and_patience_keys_reach_the_engine():
    _, train, optim = engine_configs(
        compose_cfg(
            "optim=adam",
            "optim.weight_decay=0.1",
            "optim.schedule.name=step",
            "optim.schedule.step_start=500",
            "optim.schedule.step_every=100",
            "optim.schedule.step_factor=0.9",
            "train.patience=4",
        ),
        vocab_size=10,
    )
    assert (optim.weight_decay, train.patience) == (0.1, 4)
    assert optim.schedule == ScheduleConfig("step", step_start=500, step_every=100, step_factor=0.9)


@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            ["optim=adam", "optim.schedule.warmup_iters=50", "train.max_iters=20"],
            "optim.schedule.warmup_iters must be at most max_iters=20",
        ),
        (
            ["optim=adam", "optim.schedule.name=cosine", "train.max_iters=null", "train.max_seconds=10"],
            "optim.schedule.decay_iters must be set for the cosine schedule",
        ),
        (["train.patience=3", "train.val_fraction=0"], "train.patience stops on the validation loss, but there is no"),
    ],
)
def test_settings_checked_against_each_other_or_the_data_name_their_keys(tmp_path, overrides, line):
    text = tmp_path / "text.txt"
    text.write_text("hello world, " * 200)
    with pytest.raises(ConfigError, match=f"^{line}"):
        build_trainer(compose_cfg("data=file", f"data.path={text}", "train.seq_length=8", *overrides), tmp_path)


def test_grid_preset_sweeps_the_four_card_parameters():
    cfg = compose_cfg("experiment=grid", hydra=True)
    assert set(cfg.hydra.sweeper.params) == {"model.hidden_size", "train.seq_length", "optim.lr", "optim.clip"}


@pytest.mark.parametrize("preset", ["grid", "optuna", "paper_cells", "paper_cells_search"])
def test_sweep_presets_compare_at_equal_iterations_with_time_only_as_a_cap(preset):
    cfg = compose_cfg(f"experiment={preset}")
    assert cfg.train.max_iters > 0
    # the cap sits far above what the iterations take, so no job of a fair comparison reaches it
    assert cfg.train.max_seconds >= 600


def test_the_sweep_space_is_the_presets_params_with_the_command_lines_sweeps_and_pins():
    cfg = compose_cfg("experiment=grid", hydra=True)
    with read_write(cfg):  # what `charrnn-train experiment=grid model.hidden_size=8,16 optim.lr=0.1` said
        cfg.hydra.overrides.task = ["model.hidden_size=8,16", "optim.lr=0.1"]
    assert swept_space(cfg) == {"model.hidden_size": "8,16", "train.seq_length": "16,32", "optim.clip": "1.0,5.0"}


def test_a_preset_sweep_narrowed_to_one_value_is_not_swept():
    cfg = compose_cfg("experiment=paper_cells", "hydra.sweeper.params.data=tinyshakespeare", hydra=True)
    space = swept_space(cfg)
    assert "data" not in space
    assert space["model"] == "rnn,lstm,gru" and space["train.seed"] == "1,2"


def test_hydra_launcher_charrnn_is_the_projects_launcher_and_joblib_is_hydras():
    launcher = compose_cfg("hydra/launcher=charrnn", hydra=True).hydra.launcher
    assert launcher.n_jobs == -1
    assert issubclass(get_class(launcher._target_), Launcher)
    assert get_class(launcher._target_).__module__ == "hydra_plugins.charrnn_launcher.process_launcher"
    joblib = compose_cfg("hydra/launcher=joblib", hydra=True).hydra.launcher
    assert joblib._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def test_n_jobs_counts_as_joblib_counts_from_the_usable_cores():
    cores = len(os.sched_getaffinity(0))
    assert [parallel_jobs(n) for n in (3, -1, -2, -cores - 5)] == [3, cores, max(1, cores - 1), 1]
    with pytest.raises(ConfigError, match="n_jobs=0 runs no job"):
        parallel_jobs(0)


@pytest.mark.parametrize(
    "overrides, keys, name",
    [
        (
            [
                "model.hidden_size=64",
                "train.seq_length=16",
                "optim.lr=0.1",
                "optim.clip=5.0",
                "data.path=/a/b.txt",
                "tracking.experiment=x",
            ],
            ["model.hidden_size", "train.seq_length", "optim.lr", "optim.clip"],
            "h=64 T=16 lr=0.1 clip=5",
        ),
        (["model=lstm", "train.seed=2"], ["model", "train.seed"], "lstm seed=2"),
        (
            ["data=pystdlib", "train.seed=1", "study.budget=200k", "model.num_layers=2", "model=gru"],
            ["data", "model", "model.num_layers", "study.budget", "train.seed"],
            "gru L=2 200k seed=1 pystdlib",
        ),
        (["optim.lr=0.023456789012", "model.hidden_size=128"], ["model.hidden_size", "optim.lr"], "h=128 lr=0.0235"),
        (["optim.lr=0.9999", "optim.clip=1.9996"], ["optim.lr", "optim.clip"], "lr=0.9999 clip=1.9996"),  # not 1, 2
        (
            [
                "train.eval_max_chars=100000",
                "train.sample_length=200",
                "train.sample_every=1000",
                "train.log_every=100",
                "train.target_val_loss=1.5",
            ],
            [
                "train.eval_max_chars",
                "train.sample_length",
                "train.sample_every",
                "train.log_every",
                "train.target_val_loss",
            ],
            "eval_max_chars=100000 sample_length=200…",
        ),
    ],
)
def test_child_runs_are_named_by_their_swept_values_in_at_most_40_characters(overrides, keys, name):
    assert short_name(overrides, keys) == name
    assert len(name) <= 40


def test_optuna_preset_uses_an_in_memory_study():
    cfg = compose_cfg("experiment=optuna", hydra=True)
    assert cfg.hydra.sweeper.storage is None
    assert cfg.hydra.sweeper.direction == "minimize"


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.hidden_size=0"], "^model.hidden_size must be a positive integer"),
        (["model.dropout=-0.1"], r"^model.dropout must be in \[0, 1\), got -0.1"),
        (["model.dropout=1"], r"^model.dropout must be in \[0, 1\), got 1.0"),
        (["optim.schedule.name=linear"], "^optim.schedule.name must be one of constant, step, cosine, got 'linear'"),
        (["optim.schedule.warmup_iters=-5"], "^optim.schedule.warmup_iters must be an integer >= 0, got -5"),
        (["optim.schedule.step_factor=nan"], "^optim.schedule.step_factor must be a finite number, got nan"),
        (["optim=adam", "optim.weight_decay=-1"], "^optim.weight_decay must be >= 0, got -1"),
        (["optim.weight_decay=0.1"], "^optim.weight_decay is decoupled weight decay for adam .AdamW., not for adagrad"),
        (["train.patience=0"], "^train.patience must be a positive integer"),
        (["optim.lr=0"], "^optim.lr must be positive"),
        (["optim.clip_mode=sideways"], "^optim.clip_mode must be one of"),
        (["train.dtype=float16"], "^train.dtype must be one of"),
        (["train.log_every=0"], "^train.log_every must be a positive integer"),
        (["optim=rmsprop", "+optim.options.decay=1.5"], r"^optim.options.decay must be in \[0, 1\)"),
        (["model.cell=transformer"], "^unknown cell"),
    ],
)
def test_bad_values_raise_one_line_config_errors_naming_the_key(overrides, words):
    with pytest.raises(ConfigError, match=words) as err:
        engine_configs(compose_cfg(*overrides), vocab_size=10)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, line",
    [
        ("model.hidden_size=abc", "model.hidden_size: Value 'abc' of type 'str' could not be converted to Integer"),
        ("model.num_layers=1.5", "model.num_layers: Value '1.5' of type 'float' could not be converted to Integer"),
        ("model.hidden_size=null", "model.hidden_size: field 'model.hidden_size' is not Optional"),
        ("optim.lr=fast", "optim.lr: Value 'fast' of type 'str' could not be converted to Float"),
        ("train.max_iters=many", "train.max_iters: Value 'many' of type 'str' could not be converted to Integer"),
        ("train.max_seconds=soon", "train.max_seconds: Value 'soon' of type 'str' could not be converted to Float"),
        (
            "train.val_fraction=[0.1]",
            "train.val_fraction: Value '[0.1]' of type 'list' could not be converted to Float",
        ),
        ("record.enabled=maybe", "record.enabled: Value 'maybe' is not a valid bool (type str)"),
        (
            "model.hiden_size=8",
            "unknown key model.hiden_size: did you mean model.hidden_size? (--help lists every key)",
        ),
        (
            "model.vocab_size=8",
            "unknown key model.vocab_size: did you mean model.hidden_size? (--help lists every key)",
        ),
        ("modle=lstm", "unknown key modle: did you mean model? (--help lists every key)"),
        # a key without its group is the one key of that name
        ("hidden_size=8", "unknown key hidden_size: did you mean model.hidden_size? (--help lists every key)"),
        ("lr=0.1", "unknown key lr: did you mean optim.lr? (--help lists every key)"),
        (
            "xyzzy=1",
            "unknown key xyzzy: the top-level keys are model, optim, train, data, tracking, record, study (--help "
            "lists every key)",
        ),
    ],
)
def test_the_schema_rejects_a_bad_type_or_an_unknown_key_in_one_line_naming_the_key(override, line):
    with pytest.raises(HydraException) as err:
        compose_cfg(override)
    assert config_error_line(err.value, TrainAppSchema) == line


@pytest.mark.parametrize(
    "args, error",
    [
        (["record.enabled=true", "+record.enabled=False", "~record.enabled", "-m", "model=lstm"], None),
        (["record.enabled=true,false", "model.hidden_size=1"], None),
        (["record.enabled=1"], "record.enabled must be true or false, got 1"),
        (["record.enabled=on"], "record.enabled must be true or false, got 'on'"),
        (["-m", "record.enabled=true,no"], "record.enabled must be true or false, got 'no'"),
        (["record.enabled=range(0,2)"], "record.enabled must be true or false, got 'range(0,2)'"),
    ],
)
def test_a_bool_key_takes_only_true_or_false_from_the_command_line(args, error):
    # OmegaConf alone would read yes, on and 1 as true
    assert boolean_override_error(args, TrainAppSchema) == error


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("train.max_iters=null", "max_iters", None),
        ("train.max_seconds=30", "max_seconds", 30.0),
        ("train.target_val_loss=1", "target_val_loss", 1.0),
        ("optim.clip=null", "clip", None),
    ],
)
def test_optional_keys_take_null_and_numbers_are_converted_to_the_field_type(override, key, value):
    cfg = compose_cfg(override)
    found = cfg.train[key] if override.startswith("train.") else cfg.optim[key]
    assert found == value and type(found) is type(value)


def test_each_default_is_written_once_in_the_engine_dataclasses():
    """The config's model/optim/train values are the engine's defaults, except the main job's two stop limits,
    the only train keys conf/config.yaml states; no group file restates a default."""
    cfg = compose_cfg()
    main_job = {"max_iters": None, "max_seconds": 120.0}
    assert OmegaConf.load(CONF / "config.yaml").train == main_job
    for engine, section, group_keys in [
        (ModelConfig, cfg.model, {"cell"}),
        (TrainConfig, cfg.train, set()),
        (OptimConfig, cfg.optim, {"name", "lr"}),
    ]:
        for f in dataclasses.fields(engine):
            if f.name in section and f.name not in group_keys | set(main_job):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                assert section[f.name] == default, f.name
    assert {k: cfg.train[k] for k in main_job} == main_job
    # the engine's library default is untouched by the main job's values
    assert (TrainConfig().max_iters, TrainConfig().max_seconds) == (10_000, None)
    for group in ("model", "optim"):
        for path in (CONF / group).glob("*.yaml"):
            assert set(OmegaConf.load(path)) <= {"cell", "name", "lr"}, path


def test_the_engine_fields_the_data_decides_are_not_keys():
    cfg = compose_cfg()
    assert "vocab_size" not in cfg.model and "dtype" not in cfg.model and cfg.train.dtype == "float64"
    model, _, _ = engine_configs(compose_cfg("train.dtype=float32"), vocab_size=10)
    assert (model.vocab_size, model.dtype) == (10, "float32")


def test_optimizer_options_reach_the_engine_which_checks_them():
    _, _, optim = engine_configs(compose_cfg("optim=adam", "+optim.options.beta1=0.95"), vocab_size=10)
    assert optim.options == {"beta1": 0.95}
    with pytest.raises(ConfigError, match="adagrad has no option 'beta1'"):
        engine_configs(compose_cfg("optim=adagrad", "+optim.options.beta1=0.95"), vocab_size=10)


def test_embedded_store_lives_in_the_launch_directory(tmp_path):
    store = Store.resolve(None, tmp_path)
    assert store.uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert store.artifact_root == tmp_path.resolve() / "mlartifacts"
    assert Store.resolve("sqlite:///sub/x.db", tmp_path).uri == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    assert Store.resolve("http://127.0.0.1:5000", tmp_path).artifact_root is None
    assert store.ui_address("3") == (
        f"mlflow ui --backend-store-uri {store.uri}, then open "
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&viewStateShareKey=charrnn-losses"
    )
    assert (
        Store.resolve("http://h:5000/", tmp_path).ui_address("3")
        == "open http://h:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=charrnn-losses"
    )


def test_flatten_joins_nested_keys():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {"a.b": 1, "a.c.d": None, "e": "x"}


def test_a_runs_best_is_its_logged_val_best_loss_and_none_before_any_evaluation():
    def run(*metrics):  # a run as search_runs returns it: each metric's latest value
        return Run(RunInfo("r", "0", "u", "FINISHED", 0, None, "active"), RunData(metrics=list(metrics)))

    evaluated = run(Metric("val/loss", 2.3, 0, 200), Metric("val/best_loss", 2.1, 0, 200))
    assert best_val_loss(evaluated) == 2.1  # the engine's running minimum, never val/loss's last value
    assert best_val_loss(run(Metric("train/loss", 3.0, 0, 10))) is None  # a run that never evaluated


def test_the_children_filter_selects_a_parents_runs_and_narrows_by_more_clauses():
    assert children_filter("abc") == "tags.`mlflow.parentRunId` = 'abc'"
    assert (
        children_filter("abc", "attributes.status = 'RUNNING'")
        == "tags.`mlflow.parentRunId` = 'abc' and attributes.status = 'RUNNING'"
    )


def test_the_owner_tag_reads_back_as_it_was_written():
    tag = "node7 4242 0123456789abcdef0123456789abcdef 1765000000"  # as runs already in stores carry it
    owner = Owner.parse(tag)
    assert owner == Owner("node7", 4242, "0123456789abcdef0123456789abcdef", 1765000000.0)
    assert owner.format() == tag
    assert Owner.parse(Owner.new().format()) is not None
    assert Owner.parse("") is None  # a run that has no owner tag
