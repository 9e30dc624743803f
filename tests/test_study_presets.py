"""The study presets: paper_cells really matches its parameter budgets for each corpus, cell and depth, and
sweeps the paper's grid at equal updates; the single-run presets are the runs they say. Tiny runs of each preset
(the preset itself, its iterations, batch and data cut down) are here and in test_cli_sweep.py."""

from __future__ import annotations

import itertools

import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import OmegaConf, read_write

from charrnn.corpora import load_corpus
from charrnn.data import Vocab, split_corpus
from charrnn.model import ModelConfig, count_params
from charrnn_analysis.record import Recording
from conftest import SHRINK, compose_cfg, copy_pystdlib_files, only_run, store_client

TINYSHAKESPEARE_VOCAB = 65  # distinct characters of tinyshakespeare.txt (sha256 86c4e6aa...)
BUDGETS = {"50k": 50_000, "200k": 200_000}
CELLS, DEPTHS = ("rnn", "lstm", "gru"), (1, 2)


def test_paper_cells_matches_each_budget_within_two_percent_with_its_chosen_lr_and_one_batch_and_budget():
    cfg = compose_cfg("experiment=paper_cells", hydra=True)
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {
        "data": "tinyshakespeare,pystdlib",
        "model": "rnn,lstm,gru",
        "model.num_layers": "1,2",
        "study.budget": "50k,200k",
        "train.seed": "1,2",
    }
    assert cfg.optim.name == "adam" and cfg.train.max_iters == 4000 and cfg.tracking.experiment == "paper_cells"
    assert cfg.train.patience == 4 and cfg.train.eval_every == 250
    vocab = {"tinyshakespeare": TINYSHAKESPEARE_VOCAB, "pystdlib": Vocab.from_text(load_corpus("pystdlib").text).size}
    shared = set()
    for corpus, (budget, target) in itertools.product(vocab, BUDGETS.items()):
        counts = {}
        for cell, depth in itertools.product(CELLS, DEPTHS):
            job = compose_cfg(
                "experiment=paper_cells",
                f"data={corpus}",
                f"model={cell}",
                f"model.num_layers={depth}",
                f"study.budget={budget}",
            )
            assert (job.model.cell, job.model.num_layers, job.data.name) == (cell, depth, corpus)
            counts[cell, depth] = count_params(ModelConfig(cell, vocab[corpus], int(job.model.hidden_size), depth))
            chosen = (corpus, cell, f"layers{depth}", budget)
            assert job.optim.lr == OmegaConf.select(job, "study.lr." + ".".join(chosen))
            assert job.model.dropout == OmegaConf.select(job, "study.dropout." + ".".join(chosen))
            with read_write(job):
                del job.optim.lr
            shared.add(OmegaConf.to_yaml(OmegaConf.masked_copy(job, ["optim", "train"])))
        assert all(abs(n / target - 1) < 0.02 for n in counts.values()), (corpus, budget, counts)
    assert len(shared) == 1  # every job: the same optimizer, clipping, batch, seq_length, updates and dtype


def test_paper_cells_search_tries_each_lr_on_every_model_of_the_table_at_equal_updates():
    search = compose_cfg("experiment=paper_cells_search", hydra=True)
    table = compose_cfg("experiment=paper_cells", hydra=True)
    assert OmegaConf.to_container(search.hydra.sweeper.params) == {
        **OmegaConf.to_container(table.hydra.sweeper.params),
        "train.seed": "1",
        "optim.lr": "0.002,0.005,0.01",
    }
    assert (search.train.max_iters, search.train.patience, search.tracking.experiment) == (
        2000,
        None,
        "paper_cells_search",
    )
    assert search.model.dropout == 0.0 and search.study.hidden_size == table.study.hidden_size
    job = compose_cfg("experiment=paper_cells_search", "model=gru", "optim.lr=0.01", "study.budget=200k")
    assert (job.optim.lr, job.model.hidden_size) == (0.01, 201)  # pystdlib's 200k GRU


@pytest.mark.parametrize(
    "preset, cell, layers, corpus, stop",
    [
        ("shakespeare_quick", "lstm", 1, "tinyshakespeare", (None, 135.0)),
        ("shakespeare_lstm", "lstm", 2, "tinyshakespeare", (None, 3600.0)),
        ("code_lstm", "lstm", 2, "pystdlib", (2500, 3600.0)),
    ],
)
def test_single_run_presets(preset, cell, layers, corpus, stop):
    cfg = compose_cfg(f"experiment={preset}")
    assert (cfg.model.cell, cfg.model.num_layers, cfg.data.name) == (cell, layers, corpus)
    assert (cfg.train.max_iters, cfg.train.max_seconds) == stop
    assert cfg.train.dtype == "float32" and cfg.optim.name == "adam" and cfg.tracking.experiment == preset


@pytest.mark.parametrize("preset", ["shakespeare_quick", "shakespeare_lstm"])
def test_a_tiny_shakespeare_preset_run_finishes(preset, cli, small_text, tmp_path):
    # 3 updates end before the presets' lr warmup, which charrnn-train refuses as a mistake
    out = cli(
        "charrnn-train",
        f"experiment={preset}",
        *SHRINK,
        "optim.schedule.warmup_iters=0",
        "data=file",
        f"data.path={small_text}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store_client(tmp_path), experiment=preset)
    assert run.info.status == "FINISHED" and run.data.tags["charrnn.reason"] == "reached max_iters=3"
    assert run.data.params["model.cell"] == "lstm" and run.data.params["train.dtype"] == "float32"


def test_a_tiny_code_lstm_run_records_its_held_out_files_and_the_corpus_version(cli, tmp_path):
    """code_lstm cut down: the run tags the corpus version, and every tool that rebuilds its validation text --
    the end-of-run recording, charrnn-analyze -- gets the same held-out files."""
    out = cli("charrnn-train", "experiment=code_lstm", *SHRINK)
    assert out.returncode == 0, out.stderr[-3000:]
    corpus = load_corpus("pystdlib")
    assert ("note: " in out.stderr) == (corpus.differs is not None)  # this Python's pystdlib says so or not
    client = store_client(tmp_path)
    run = only_run(client, experiment="code_lstm")
    tags = run.data.tags
    assert tags["charrnn.dataset.version"] == "pystdlib-v1" and tags["charrnn.dataset.sha256"] == corpus.sha256
    assert tags.get("charrnn.dataset.differs") == corpus.differs
    [dataset] = run.inputs.dataset_inputs
    assert '"version": "pystdlib-v1"' in dataset.dataset.source

    train, val = split_corpus(corpus, 0.1, 16)
    assert val.startswith("# file: ") and val not in corpus.text and len(train) + len(val) == len(corpus.text)
    trained = Recording.load(client.download_artifacts(run.info.run_id, "analysis/recording.npz", str(tmp_path)))
    analyzed = cli(
        "charrnn-analyze", f"run={run.info.run_id}", "record.length=200", f"out={tmp_path / 'an'}", "log=false"
    )
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert "whole files held out" in analyzed.stdout
    again = Recording.load(tmp_path / "an" / "recording.npz")
    assert trained.text == again.text == val[:200]
    assert trained.offsets[0] == again.offsets[0] == len(train)


def test_a_run_on_another_pythons_pystdlib_is_tagged_with_why_its_text_differs(tmp_path):
    """What a Python other than the reference one builds (a file missing here): the corpus says why, and the
    run's tags carry it beside the version, so its numbers are never compared with the reference's unawares."""
    from charrnn import corpora
    from charrnn_experiments.store import Store
    from charrnn_experiments.tracking import MlflowTracker

    corpus = corpora._pystdlib_corpus(copy_pystdlib_files(tmp_path / "lib", leave_out="__future__.py"))
    assert "lacking 1 of its 110 files (first __future__.py)" in corpus.differs
    store = Store.resolve(None, tmp_path)
    tracker = MlflowTracker.start(store, store.ensure_experiment("charrnn", store.client()))
    tracker.log_dataset(corpus.name, corpus.source, corpus.sha256, len(corpus.text), corpus.version, corpus.differs)
    tags = store.client().get_run(tracker.run_id).data.tags
    assert tags["charrnn.dataset.differs"] == corpus.differs and tags["charrnn.dataset.version"] == "pystdlib-v1"
    assert tags["charrnn.dataset.sha256"] == corpus.sha256 != corpora.PYSTDLIB_REFERENCE_SHA256
    tracker.finish("FINISHED", "test")


def test_a_tiny_paper_cells_search_names_each_models_best_lr_in_the_tables_paper_cells_reads(cli, tmp_path):
    # the search narrowed to one model (its three lrs), each job cut to 3 updates
    out = cli(
        "charrnn-train",
        "experiment=paper_cells_search",
        "data=pystdlib",
        "study.budget=50k",
        "model=lstm",
        "model.num_layers=1",
        *SHRINK,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = store_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("paper_cells_search").experiment_id])
    [parent] = [r.info.run_id for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if r.info.run_id != parent]
    assert sorted(float(r.data.params["optim.lr"]) for r in children) == [0.002, 0.005, 0.01]
    best = min(children, key=lambda r: min(m.value for m in client.get_metric_history(r.info.run_id, "val/loss")))

    compared = cli("charrnn-compare", f"parent={parent}", f"out={tmp_path / 'cmp'}", "tracking.uri=sqlite:///mlflow.db")
    assert compared.returncode == 0, compared.stderr[-3000:]
    chosen = OmegaConf.load(tmp_path / "cmp" / "chosen_settings.yaml")
    assert OmegaConf.to_container(chosen) == {
        "study": {
            "lr": {"pystdlib": {"lstm": {"layers1": {"50k": float(best.data.params["optim.lr"])}}}},
            "dropout": {"pystdlib": {"lstm": {"layers1": {"50k": 0.0}}}},
        }
    }
    # pasted under study: in paper_cells.yaml, the table's job for that model trains at the chosen lr
    job = OmegaConf.merge(
        compose_cfg("experiment=paper_cells", "data=pystdlib", "model=lstm", "study.budget=50k"), chosen
    )
    assert job.optim.lr == float(best.data.params["optim.lr"]) and job.model.dropout == 0.0
