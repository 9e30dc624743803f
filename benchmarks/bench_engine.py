"""Training throughput of the NumPy engine against its yardsticks, side by side in one process.

    .venv/bin/python benchmarks/bench_engine.py            # full run, a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_engine.py --quick    # under a minute
    .venv/bin/python benchmarks/bench_engine.py --json out.json

What it measures, all on tinyshakespeare ($CHARRNN_DATA_DIR, else ../shared/data beside the repo):

1. The gist's settings (rnn, H=100, T=25, B=1, Adagrad lr 0.1, clip 5, float64): ``Trainer.train_step`` against
   the gist's own training loop as the gist is written (``gist_port.py``: np.dot, dicts, one-hot columns, the
   text encoded each iteration; sampling off), the yardstick, target >= 4x; and, beside it, against
   ``charrnn.reference.GistRNN``, the same algorithm as the engine tests' parity oracle (its losses equal the
   port's to the last bit: tests/test_gist_port.py).
   Then what users feel: ``charrnn-train experiment=minchar data=tinyshakespeare`` run for a fixed number of
   iterations in a subprocess, its logged ``throughput/chars_per_s`` (characters over the seconds in training
   steps) read back from its store, against the gist port timed over as many iterations, in alternating
   rounds. The share of the app's wall time spent in training steps (``throughput/train_fraction``) shows the
   app's overhead around the steps.
2. PyTorch CPU (optional extra ``bench``): nn.RNN(tanh)/nn.LSTM/nn.GRU between an nn.Embedding and an nn.Linear
   head, float32, same H, T, B, Adagrad lr 0.1, elementwise clipping at 5, truncated BPTT with the hidden state
   carried and detached, torch.set_num_threads = the engine's BLAS thread count there. The embedding has V
   dimensions, so embedding + input weights form a V-row table like the engine's ``Wxh`` (the engine gathers
   rows where torch multiplies). Targets (engine/torch): B=32,H=100,T=25: rnn >= 3, lstm/gru >= 1.5;
   B=32,H=512,T=64: rnn >= 1.5, lstm >= 1.2, gru >= 1.5. torch runs nn.LSTM (not RNN or GRU) through oneDNN's fused
   LSTM kernel; an extra row per configuration, without a target, shows its LSTM with oneDNN switched off.
3. At H=512 the engine's matmul FLOP/s as a fraction of this machine's float32 GEMM rate (2048x2048 sgemm calls
   raced in the same alternating rounds as the engine, so both see the same load). Target >= 65%. Matmul FLOPs
   per iteration, G gates (1 rnn, 4 lstm, 3 gru), L layers:
       forward   recurrence     T * 2*B*H*GH          per layer (Whh h_{t-1})
                 input proj.    0 for layer 0 (a column gather); 2*T*B*H*GH for each layer above
                 output         2*T*B*H*V             (h Why^T)
       backward  twice each forward term: the gradient on the input of the matmul and on its weights
                 (recurrence: dh_{t-1} = Whh^T da and dWhh = da^T h_{t-1}; output: dh and dWhy)
       total     3 * (L*T*2*B*H*GH + (L-1)*T*2*B*H*GH + T*2*B*H*V)
   Elementwise work (tanh, gates, softmax, Adagrad) is not counted: the fraction says how close the engine
   comes to spending all its time in GEMM.
4. Memory: the peak of NumPy's allocations traced by tracemalloc during one training step (caches, gradients,
   temporaries), plus the persistent arrays (parameters, optimizer state, hidden state) by nbytes. Torch's
   allocations are invisible to tracemalloc and are not reported; the process's ru_maxrss closes the table.

5. Where one training step's time goes (per pass, the fastest of repeated calls, B=32 float32): the recurrence's
   forward and backward loops split into their T per-step GEMMs and everything else in the loop (the
   elementwise gate passes), the rest of the model's forward and backward (input gather, output layer,
   softmax, the weight-gradient GEMMs over all T*B positions, the scatter-add), and clipping + Adagrad.

Each pair of contenders is warmed up, then timed in alternating rounds (engine, peer, engine, peer, ...) so
that noise from other processes hits both; the rate reported is the median over rounds. Every contender of a
configuration runs on the BLAS (or torch) thread count the engine gets there in ``Trainer.run``: one thread
for models whose per-step matmuls are too small to split (``charrnn.train.blas_threads``), else NumPy's count
(``--threads``); the report prints each contender's settings. As in ``charrnn-train``, the process keeps
freed memory (``charrnn.allocator``) from the start, for every contender.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if "CHARRNN_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["CHARRNN_DATA_DIR"] = str(REPO.parent / "shared" / "data")

import numpy as np  # noqa: E402
from gist_port import gist_training  # noqa: E402  (benchmarks/, beside this script)
from logged_throughput import training_steps  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from charrnn.allocator import keep_freed_memory  # noqa: E402
from charrnn.cells import CELLS  # noqa: E402
from charrnn.corpora import load_corpus  # noqa: E402
from charrnn.data import BatchStream, Vocab  # noqa: E402
from charrnn.model import (  # noqa: E402
    ModelConfig,
    _layer_params,
    backward,
    forward,
    init_params,
    input_projection,
    softmax_cross_entropy,
)
from charrnn.optim import clip_gradients  # noqa: E402
from charrnn.reference import GistRNN  # noqa: E402
from charrnn.train import OptimConfig, TrainConfig, Trainer, blas_threads  # noqa: E402

try:
    import torch
except ImportError:  # the optional extra `bench` is not installed
    torch = None
# switching oneDNN off for the extra LSTM row makes torch warn about Intel GPUs, which this is not about
warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")

TORCH_TARGETS = {  # (B, H, T) -> cell -> minimum engine/torch ratio (issue 9)
    (32, 100, 25): {"rnn": 3.0, "lstm": 1.5, "gru": 1.5},
    (32, 512, 64): {"rnn": 1.5, "lstm": 1.2, "gru": 1.5},
}
GIST_TARGET = 4.0  # engine / the gist's own loop (gist_port.py)
GIST_PEERS = ("gist-port", "GistRNN")  # their step's peak memory is NumPy's, which tracemalloc sees
FLOP_TARGET = 0.65


# ------------------------------------------------------------------------------------------------ machine
def blas_info() -> dict:
    """BLAS library, kernel and thread count NumPy runs with (threadpoolctl when available)."""
    info = {"threads": os.cpu_count() or 1, "library": "unknown", "kernel": "unknown"}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in pool.get("filepath", ""):
            info = {
                "threads": pool["num_threads"],
                "library": f"{pool['internal_api']} {pool.get('version')}",
                "kernel": pool.get("architecture", "unknown"),
            }
    return info


class GemmRunner:
    """The machine's own float32 GEMM rate: one call = one n x n x n matmul into a preallocated output. It races
    alongside the engine at H=512, so that the FLOP fraction compares rates taken under the same load."""

    name = "gemm"

    def __init__(self, n: int = 2048):
        rng = np.random.default_rng(0)
        self.a, self.b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        self.out = np.empty((n, n), dtype=np.float32)
        self.work_per_step = 2.0 * n**3  # FLOPs

    def step(self):
        np.matmul(self.a, self.b, out=self.out)


def gemm_rate(seconds: float, n: int = 2048) -> float:
    """float32 FLOP/s of the GEMM loop on its own: the best of a few short runs (noise only slows it down)."""
    runner, best = GemmRunner(n), 0.0
    runner.step()  # warm-up
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        runner.step()
        best = max(best, runner.work_per_step / (time.perf_counter() - t0))
        if time.perf_counter() >= t_end:
            return best


def matmul_flops(cell: str, hidden: int, seq: int, batch: int, vocab: int, layers: int = 1) -> float:
    """Forward + backward matmul FLOPs of one training iteration (see the module docstring)."""
    GH = CELLS[cell].gates * hidden
    recurrence = layers * seq * 2 * batch * hidden * GH
    input_proj = (layers - 1) * seq * 2 * batch * hidden * GH  # layer 0 gathers rows: no FLOPs
    output = seq * 2 * batch * hidden * vocab
    return 3.0 * (recurrence + input_proj + output)


# ---------------------------------------------------------------------------------------------- contenders
def numpy_threads() -> int:
    """The BLAS thread count NumPy runs with now (inside any threadpool_limits)."""
    return blas_info()["threads"]


def engine_threads(cell: str, hidden: int, batch: int, vocab_size: int, process_threads: int) -> int:
    """The BLAS threads the engine trains this model on in ``Trainer.run``, which every contender gets."""
    return blas_threads(ModelConfig(cell, vocab_size, hidden), batch) or process_threads


def sizes(cell, dtype, batch, seq, hidden) -> str:
    return f"{cell}, {dtype}, B={batch}, T={seq}, H={hidden}"


GIST_OPTIM = "Adagrad lr 0.1, clip 5 by value"


class EngineRunner:
    """charrnn's Trainer; one call = one ``train_step`` (batch, forward, backward, clip, Adagrad)."""

    def __init__(self, cell, hidden, seq, batch, dtype, vocab, text):
        self.name = "engine"
        config = ModelConfig(cell, vocab.size, hidden, 1, dtype)
        train = TrainConfig(
            seq_length=seq,
            batch_size=batch,
            max_iters=None,
            max_seconds=1e9,
            sample_every=0,
            log_every=10**9,
            eval_every=10**9,
        )
        self.trainer = Trainer(config, train, OptimConfig("adagrad", lr=0.1, clip=5.0), vocab, text)
        self.work_per_step = seq * batch  # characters
        self.settings = f"charrnn Trainer.train_step, {sizes(cell, dtype, batch, seq, hidden)}, {GIST_OPTIM}"
        self.threads = numpy_threads

    def step(self):
        self.trainer.train_step()

    def persistent_bytes(self) -> int:
        t = self.trainer
        arrays = [*t.params.values(), *t.optimizer.state.values(), *(a for layer in t.state for a in layer)]
        return sum(a.nbytes for a in arrays)


class GistRunner:
    """One of the gist's per-character trainers at B=1; one call = one whole iteration."""

    def __init__(self, name: str, description: str, step, hidden: int, seq: int):
        self.name = name
        self.step = step
        self.work_per_step = seq
        self.settings = f"{description}, {sizes('rnn', 'float64', 1, seq, hidden)}, {GIST_OPTIM}"
        self.threads = numpy_threads


def gist_runners(hidden, seq, vocab, text, data_ix) -> tuple[GistRunner, GistRunner]:
    """The yardstick, the gist's training loop as written (gist_port.py), and the engine tests' parity oracle
    GistRNN, both from the gist's initialisation (N(0, 0.01^2) weights, zero biases; each copies them)."""
    weights = init_params(ModelConfig("rnn", vocab.size, hidden, 1, "float64"), np.random.default_rng(42))
    loop = gist_training(text, vocab.chars, weights, seq_length=seq, learning_rate=0.1)
    oracle = GistRNN(data_ix, vocab.size, weights, seq_length=seq, learning_rate=0.1)
    return (
        GistRunner(
            "gist-port",
            "the gist's loop as written (benchmarks/gist_port.py: np.dot, dicts, one-hot "
            "columns, the text encoded each iteration)",
            loop.__next__,
            hidden,
            seq,
        ),
        GistRunner("GistRNN", "charrnn.reference.GistRNN.step (the parity oracle)", oracle.step, hidden, seq),
    )


class TorchRunner:
    """Embedding(V, V) -> nn.RNN/LSTM/GRU(V, H) -> Linear(H, V), float32, Adagrad, clip_grad_value_."""

    def __init__(self, cell, hidden, seq, batch, vocab, data_ix, onednn: bool = True):
        # torch runs nn.LSTM through oneDNN's fused RNN kernel when it can; onednn=False measures its generic path
        self.name = "torch" if onednn else "torch-no-onednn"
        self.onednn = onednn
        nn = torch.nn
        V = vocab.size
        torch.manual_seed(0)
        rnn_class = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.embed = nn.Embedding(V, V)
        self.rnn = rnn_class(V, hidden, num_layers=1, **kwargs)  # input (T, B, V)
        self.head = nn.Linear(hidden, V)
        self.params = [*self.embed.parameters(), *self.rnn.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.Adagrad(self.params, lr=0.1)
        self.stream = BatchStream(data_ix, batch, seq)
        self.cell, self.hidden, self.batch = cell, hidden, batch
        self.state = None
        self.work_per_step = seq * batch
        self.settings = (
            f"torch {torch.__version__} Embedding + nn.{rnn_class.__name__} + Linear, "
            f"{sizes(cell, 'float32', batch, seq, hidden)}, torch.optim.Adagrad lr 0.1, "
            f"clip_grad_value_ 5{'' if onednn else ', oneDNN off'}"
        )
        self.threads = torch.get_num_threads

    def _zero_state(self):
        h = torch.zeros(1, self.batch, self.hidden)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def step(self):
        if self.onednn:
            self._step()
        else:
            with torch.backends.mkldnn.flags(enabled=False):
                self._step()

    def _step(self):
        inputs, targets, reset = self.stream.next_batch()
        if reset or self.state is None:
            self.state = self._zero_state()
        x = torch.from_numpy(inputs)  # (T,B)
        y = torch.from_numpy(targets)
        hs, state = self.rnn(self.embed(x), self.state)
        logits = self.head(hs)  # (T,B,V)
        # the engine's loss: summed over time, mean over the batch
        loss = (
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            / self.batch
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.params, 5.0)
        self.optimizer.step()
        # truncated BPTT: carry the state, cut the graph
        self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def persistent_bytes(self) -> int:
        return 0  # not measured


# ---------------------------------------------------------------------------------------------- measuring
def _time(runner, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        runner.step()
    return time.perf_counter() - t0


def race(runners, seconds: float, rounds: int, warmup: float) -> dict[str, dict]:
    """Warm up each runner, size its rounds to ~seconds/rounds, then alternate timed rounds between them.
    Returns {name: {"rate": median over rounds of work per second (characters, or FLOPs for the GEMM),
    "spread": (min, max), "iters": total}}."""
    iters_per_round = {}
    for r in runners:
        r.step()
        t0, n = time.perf_counter(), 0
        while n < 2 or time.perf_counter() - t0 < warmup:
            r.step()
            n += 1
        per_iter = (time.perf_counter() - t0) / n
        iters_per_round[r.name] = max(1, math.ceil(seconds / rounds / per_iter))
    rates = {r.name: [] for r in runners}
    for _ in range(rounds):
        for r in runners:
            n = iters_per_round[r.name]
            rates[r.name].append(n * r.work_per_step / _time(r, n))
    return {
        name: {"rate": statistics.median(v), "spread": (min(v), max(v)), "iters": iters_per_round[name] * rounds}
        for name, v in rates.items()
    }


@contextmanager
def contender_threads(n: int):
    """NumPy's BLAS and torch on ``n`` threads for one configuration's contenders."""
    previous = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(n, user_api="blas"):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(previous)


APP_COMMAND = [
    "experiment=minchar",
    "data=tinyshakespeare",
    "train.max_seconds=null",
    "record.enabled=false",
]  # the end-of-run recording comes after training, outside the figure


def app_round(iters: int) -> tuple[float, float]:
    """One ``charrnn-train`` run of ``iters`` iterations into a fresh store. Returns its logged throughput
    (characters per second in training steps, over all its logged windows) and its last logged share of wall
    time in training steps."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        out = subprocess.run(
            [
                str(Path(sys.executable).parent / "charrnn-train"),
                *APP_COMMAND,
                f"train.max_iters={iters}",
                f"tracking.uri={uri}",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
            sys.exit(f"error: charrnn-train {' '.join(APP_COMMAND)} failed (exit {out.returncode}): {last}")
        client = MlflowClient(uri)
        [run] = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
        chars, seconds = training_steps(client, run)
        fractions = client.get_metric_history(run.info.run_id, "throughput/train_fraction")
        return chars / seconds, max(fractions, key=lambda m: m.step).value


def race_app(port: GistRunner, iters: int, rounds: int) -> dict[str, dict]:
    """The app's logged throughput against the gist port timed over as many iterations, alternating."""
    app, port_rates, fractions = [], [], []
    for _ in range(rounds):
        rate, fraction = app_round(iters)
        app.append(rate)
        fractions.append(fraction)
        port_rates.append(iters * port.work_per_step / _time(port, iters))
    return {
        "app": {
            "rate": statistics.median(app),
            "spread": (min(app), max(app)),
            "iters": iters * rounds,
            "train_fraction": statistics.median(fractions),
        },
        port.name: {
            "rate": statistics.median(port_rates),
            "spread": (min(port_rates), max(port_rates)),
            "iters": iters * rounds,
        },
    }


def step_peak_bytes(runner) -> int:
    """Peak of the allocations tracemalloc sees during one training step (NumPy registers its buffers)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        runner.step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls: other processes only ever slow a call down."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def step_breakdown(cell: str, hidden: int, seq: int, batch: int, vocab, text, repeats: int) -> dict[str, float]:
    """Milliseconds per training step by pass (see item 5 of the module docstring)."""
    trainer = EngineRunner(cell, hidden, seq, batch, "float32", vocab, text).trainer
    trainer.train_step()
    params, config, cell_class = trainer.params, trainer.model_config, CELLS[cell]
    inputs, targets, _ = trainer.stream.next_batch()
    p = _layer_params(params, 0)
    ax = input_projection(p, inputs)
    hs, _, cell_cache = cell_class.forward(ax, trainer.state[0], p)
    dhs = np.ones_like(hs)
    logits, cache, _ = forward(params, config, inputs, trainer.state)
    _, dlogits = softmax_cross_entropy(logits, targets)
    Whh = p["Whh"]
    h, a = np.zeros(hs[0].shape[::-1], hs.dtype), np.empty_like(ax[:, 0])  # units x batch, as the cells
    flat_grad, zero_grad = np.ones_like(trainer.flat_params), np.zeros_like(trainer.flat_params)
    ms = {
        "cell forward": _best_seconds(lambda: cell_class.forward(ax, trainer.state[0], p), repeats),
        "cell backward": _best_seconds(lambda: cell_class.backward(dhs, cell_cache), repeats),
        "recurrent GEMMs forward": _best_seconds(lambda: [np.matmul(Whh, h, out=a) for _ in range(seq)], repeats),
        "recurrent GEMMs backward": _best_seconds(lambda: [np.matmul(Whh.T, a, out=h) for _ in range(seq)], repeats),
        "model forward + loss": _best_seconds(
            lambda: softmax_cross_entropy(forward(params, config, inputs, trainer.state)[0], targets), repeats
        ),
        "model backward": _best_seconds(lambda: backward(dlogits, cache), repeats),
        "clip + adagrad": _best_seconds(
            lambda: (clip_gradients(flat_grad, 5.0), trainer.optimizer.step(trainer.flat_params, zero_grad)), repeats
        ),
        "whole train_step": _best_seconds(trainer.train_step, repeats),
    }
    ms = {k: v * 1e3 for k, v in ms.items()}
    ms["elementwise in forward loop"] = ms["cell forward"] - ms["recurrent GEMMs forward"]
    ms["elementwise in backward loop"] = ms["cell backward"] - ms["recurrent GEMMs backward"]
    ms["model forward + loss outside the loop"] = ms["model forward + loss"] - ms["cell forward"]
    ms["model backward outside the loop"] = ms["model backward"] - ms["cell backward"]
    return ms


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter timings (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="limit NumPy's BLAS (threadpoolctl) and torch to N threads; default: as NumPy starts",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()
    seconds, rounds, warmup, gemm_seconds = (0.6, 4, 0.2, 0.5) if args.quick else (4.0, 10, 1.0, 2.0)
    app_iters, app_rounds = (1000, 2) if args.quick else (5000, 5)

    if args.threads:
        limits = threadpool_limits(args.threads, user_api="blas")  # noqa: F841 (held for the whole run)
    blas = blas_info()
    have_torch = torch is not None and not args.no_torch
    corpus = load_corpus("tinyshakespeare")
    vocab = Vocab.from_text(corpus.text)
    data_ix = vocab.encode(corpus.text)
    load = os.getloadavg()

    print(f"charrnn engine benchmark on tinyshakespeare ({len(corpus.text):,} chars, V={vocab.size})")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, BLAS {blas['library']} "
        f"kernel {blas['kernel']} threads {blas['threads']}"
        + (f", OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}" if "OPENBLAS_CORETYPE" in os.environ else "")
    )
    if have_torch:
        print(f"torch {torch.__version__}")
    else:
        why = "--no-torch given" if args.no_torch else "torch is not installed (make extra NAME=bench)"
        print(f"PyTorch comparison skipped: {why}")
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{'quick' if args.quick else 'full'} run: {rounds} alternating rounds, ~{seconds:g} s per contender"
    )
    print(
        "every contender of a configuration runs on the engine's thread count there (1 for small models, as "
        "Trainer.run does, else NumPy's)"
    )

    gemm_best = gemm_rate(gemm_seconds)
    print(
        f"float32 GEMM 2048^3 on this machine, best of {gemm_seconds:g} s: {gemm_best / 1e9:.1f} GFLOP/s "
        "(the FLOP fractions below use the median GEMM rate raced alongside each H=512 engine)\n"
    )

    rows = []

    def record(config, cell, dtype, result, engine, peer, target=None, flops=None):
        eng, oth = result["engine"]["rate"], result[peer.name]["rate"] if peer else None
        row = {
            "config": config,
            "cell": cell,
            "dtype": dtype,
            "engine_chars_per_s": eng,
            "engine_spread": result["engine"]["spread"],
            "peer": peer.name if peer else None,
            "peer_chars_per_s": oth,
            "peer_spread": result[peer.name]["spread"] if peer else None,
            "ratio": eng / oth if oth else None,
            "target": target,
            # the fastest round of each: what a quiet machine gives, when other processes got in the way
            "ratio_best_rounds": result["engine"]["spread"][1] / result[peer.name]["spread"][1] if peer else None,
            "met": (eng / oth >= target) if (oth and target) else None,
            "engine_step_peak_bytes": step_peak_bytes(engine),
            "engine_persistent_bytes": engine.persistent_bytes(),
            "peer_step_peak_bytes": step_peak_bytes(peer) if peer is not None and peer.name in GIST_PEERS else None,
            "settings": {r.name: f"{r.settings}, threads {r.threads()}" for r in (engine, peer) if r is not None},
        }
        if flops is not None:
            iters_per_s = eng / engine.work_per_step
            gemm = result["gemm"]["rate"]
            row.update(
                flops_per_iter=flops,
                flop_rate=flops * iters_per_s,
                gemm_rate=gemm,
                gemm_fraction=flops * iters_per_s / gemm,
                gemm_target=FLOP_TARGET,
                gemm_met=flops * iters_per_s / gemm >= FLOP_TARGET,
            )
        rows.append(row)
        line = f"  {config:<22} {cell:<5} engine {eng:>10,.0f}/s"
        if peer:
            line += (
                f"  {peer.name} {oth:>10,.0f}/s  ratio {eng / oth:5.2f}x (best rounds {row['ratio_best_rounds']:.2f}x)"
            )
            if target:
                line += f" (target {target:g}x: {'met' if eng / oth >= target else 'NOT met'})"
        if flops is not None:
            line += f"  GEMM fraction {row['gemm_fraction']:.0%} of {row['gemm_rate'] / 1e9:.0f} GF/s"
        print(line, flush=True)
        for name, settings in row["settings"].items():
            print(f"      {name}: {settings}")

    # 1. the gist's settings: the engine against the gist's own loop and against the parity oracle, then the app
    gist_threads = engine_threads("rnn", 100, 1, vocab.size, blas["threads"])
    with contender_threads(gist_threads):
        engine = EngineRunner("rnn", 100, 25, 1, "float64", vocab, corpus.text)
        port, oracle = gist_runners(100, 25, vocab, corpus.text, data_ix)
        result = race([engine, port, oracle], seconds, rounds, warmup)
        record("gist B=1 H=100 T=25", "rnn", "float64", result, engine, port, GIST_TARGET)
        record("gist B=1 H=100 T=25", "rnn", "float64", result, engine, oracle)
        app = race_app(port, app_iters, app_rounds)
        app_ratio = app["app"]["rate"] / app[port.name]["rate"]
        app_settings = {
            "app": f"charrnn-train {' '.join(APP_COMMAND)} train.max_iters={app_iters}, "
            f"{sizes('rnn', 'float64', 1, 25, 100)}, {GIST_OPTIM}, threads {gist_threads} "
            "(Trainer.run's choice)",
            port.name: f"{port.settings}, threads {port.threads()}",
        }
    print(
        f"  {'charrnn-train minchar':<28} app {app['app']['rate']:>10,.0f}/s (logged throughput/chars_per_s)"
        f"  {port.name} {app[port.name]['rate']:>10,.0f}/s  ratio {app_ratio:5.2f}x"
        f" (best rounds {app['app']['spread'][1] / app[port.name]['spread'][1]:.2f}x); "
        f"{app['app']['train_fraction']:.0%} of the app's wall time in training steps",
        flush=True,
    )
    for name, settings in app_settings.items():
        print(f"      {name}: {settings}")
    del engine, port, oracle
    gc.collect()

    # 2. and 3. PyTorch, and the GEMM fraction at H=512
    for (B, H, T), targets in TORCH_TARGETS.items():
        for cell, target in targets.items():
            with contender_threads(engine_threads(cell, H, B, vocab.size, blas["threads"])):
                engine = EngineRunner(cell, H, T, B, "float32", vocab, corpus.text)
                peer = TorchRunner(cell, H, T, B, vocab, data_ix) if have_torch else None
                flops = matmul_flops(cell, H, T, B, vocab.size) if H == 512 else None
                gemm = [GemmRunner()] if flops is not None else []
                result = race([engine] + ([peer] if peer else []) + gemm, seconds, rounds, warmup)
                record(f"B={B} H={H} T={T}", cell, "float32", result, engine, peer, target if peer else None, flops)
            del engine, peer
            gc.collect()
        if have_torch:  # for the record: torch's LSTM without its fused oneDNN kernel (no target)
            with contender_threads(engine_threads("lstm", H, B, vocab.size, blas["threads"])):
                engine = EngineRunner("lstm", H, T, B, "float32", vocab, corpus.text)
                peer = TorchRunner("lstm", H, T, B, vocab, data_ix, onednn=False)
                record(
                    f"B={B} H={H} T={T}",
                    "lstm",
                    "float32",
                    race([engine, peer], seconds / 2, rounds, warmup),
                    engine,
                    peer,
                )
            del engine, peer
            gc.collect()

    # the table
    print(
        "\n| config | cell | dtype | engine chars/s | peer | peer chars/s | engine/peer | target | met |"
        f" GEMM fraction (>={FLOP_TARGET:.0%}) | engine step peak MiB | engine params+state MiB |"
    )
    print("|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        frac = (
            (f"{r['gemm_fraction']:.0%} ({r['flop_rate'] / 1e9:.1f} GF/s, {'met' if r['gemm_met'] else 'NOT met'})")
            if "gemm_fraction" in r
            else ""
        )
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        peer_rate = f"{r['peer_chars_per_s']:,.0f}" if r["peer_chars_per_s"] else "-"
        print(
            f"| {r['config']} | {r['cell']} | {r['dtype']} | {r['engine_chars_per_s']:,.0f} | {r['peer'] or '-'} |"
            f" {peer_rate} | {ratio} | {r['target'] or '-'} | "
            f"{'-' if r['met'] is None else ('yes' if r['met'] else 'NO')} | {frac} |"
            f" {mib(r['engine_step_peak_bytes'])} | {mib(r['engine_persistent_bytes'])} |"
        )
    # 5. per-pass breakdown
    print("\nwhere a training step's time goes, ms per step (fastest of repeated calls; float32, B=32):")
    parts = [
        "recurrent GEMMs forward",
        "elementwise in forward loop",
        "recurrent GEMMs backward",
        "elementwise in backward loop",
        "model forward + loss outside the loop",
        "model backward outside the loop",
        "clip + adagrad",
        "whole train_step",
    ]
    print("| config | cell | " + " | ".join(parts) + " |")
    print("|---|---|" + "---:|" * len(parts))
    breakdowns = []
    for B, H, T in TORCH_TARGETS:
        for cell in ("rnn", "lstm", "gru"):
            ms = step_breakdown(cell, H, T, B, vocab, corpus.text, 5 if args.quick else 20)
            breakdowns.append({"config": f"B={B} H={H} T={T}", "cell": cell, "ms": ms})
            print(f"| B={B} H={H} T={T} | {cell} | " + " | ".join(f"{ms[k]:.2f}" for k in parts) + " |", flush=True)

    peaks = ", ".join(f"{r['peer']} {mib(r['peer_step_peak_bytes'])} MiB" for r in rows if r["peer"] in GIST_PEERS)
    print(
        f"\ngist baselines' step peak (tracemalloc): {peaks}; "
        f"torch memory not measured (its allocations bypass tracemalloc)"
    )
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()
    print(f"process ru_maxrss {maxrss_mib:.0f} MiB; load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("FLOPs per iteration = 3 * (T*2*B*H*G*H + T*2*B*H*V) for one layer (G = 1 rnn, 4 lstm, 3 gru)")

    if args.json:
        out = {
            "machine": {
                "blas": blas,
                "gemm_flops_best": gemm_best,
                "torch": torch.__version__ if have_torch else None,
                "numpy": np.__version__,
                "load_after": load,
                "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            },
            "quick": args.quick,
            "rows": rows,
            "app": {"ratio": app_ratio, **app, "settings": app_settings},
            "breakdown_ms": breakdowns,
            "ru_maxrss_mib": maxrss_mib,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
