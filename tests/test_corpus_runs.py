"""A run on the versioned code corpus: it records the corpus version and text, and every tool that rebuilds the
run's validation text -- the end-of-run recording, charrnn-analyze -- gets the same held-out files."""

from __future__ import annotations

from charrnn.data import PYSTDLIB_VERSION, load_corpus, split_corpus
from charrnn_analysis.record import Recording
from conftest import TINY, only_run, store_client


def test_a_pystdlib_run_records_the_corpus_version_and_its_held_out_files_everywhere(cli, tmp_path):
    out = cli("charrnn-train", *TINY, "data=pystdlib", "record.length=400", "train.eval_max_chars=2000")
    assert out.returncode == 0, out.stderr[-3000:]
    corpus = load_corpus("pystdlib")
    assert ("note: " in out.stderr) == (corpus.differs is not None)  # this Python's own pystdlib says so or not
    client = store_client(tmp_path)
    run = only_run(client)
    tags = run.data.tags
    assert tags["charrnn.dataset.version"] == PYSTDLIB_VERSION == "pystdlib-v1"
    assert tags["charrnn.dataset.sha256"] == corpus.sha256
    assert tags.get("charrnn.dataset.differs") == corpus.differs
    [dataset] = run.inputs.dataset_inputs
    assert '"version": "pystdlib-v1"' in dataset.dataset.source

    # the validation split is held-out whole files; the run recorded the head of it, analyze records the same
    train, val = split_corpus(corpus, 0.1, 8)
    assert val.startswith("# file: ") and val not in corpus.text and len(train) + len(val) == len(corpus.text)
    trained = Recording.load(client.download_artifacts(run.info.run_id, "analysis/recording.npz", str(tmp_path)))
    analyzed = cli("charrnn-analyze", f"run={run.info.run_id}", "record.length=400", f"out={tmp_path / 'an'}",
                   "log=false")
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert "whole files held out" in analyzed.stdout
    again = Recording.load(tmp_path / "an" / "recording.npz")
    assert trained.text == again.text == val[:400]
    assert trained.offsets[0] == again.offsets[0] == len(train)
