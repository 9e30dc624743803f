"""Should the engine's elementwise passes use numexpr? The LSTM cell's forward and backward, NumPy vs numexpr.

    .venv/bin/python benchmarks/bench_numexpr.py     # needs numexpr: make extra NAME=bench

numexpr evaluates a whole expression in one multi-threaded pass without temporaries. The engine's LSTM cell
(charrnn.cells.LSTMCell) already writes every pass in place (``out=``), keeps each gate a contiguous block and
activates all four gates with one tanh, so what numexpr could add is fewer passes per step and both cores on
each. This script runs the engine's cell and a numexpr twin of it (the same recurrent GEMMs, every elementwise
pass as one ``numexpr.evaluate`` per output) on the same inputs, checks that both give the same outputs, and
times them in alternating rounds (forward + backward over a whole sequence, B=32, float32, numexpr with as many
threads as NumPy's BLAS, and with one). It also times the recurrent GEMMs alone, so the elementwise part of
each contender reads as the difference.
"""

from __future__ import annotations

import statistics
import time

import numexpr as ne
import numpy as np
from threadpoolctl import threadpool_info

from charrnn.cells import LSTMCell, _gate_rows, lstm_gate_affine

ROUNDS = 15


def numexpr_forward(ax, state, Whh):
    """The engine's LSTM forward (units x batch, see charrnn.cells), each elementwise pass one evaluate."""
    G, T, B = ax.shape
    H = G // 4
    h = np.empty((T + 1, H, B), ax.dtype)
    c, tanh_cs, ifogs = np.empty_like(h), np.empty_like(h[1:]), np.empty((T, G, B), ax.dtype)
    h[0], c[0] = state[0].T, state[1].T
    scale, shift = lstm_gate_affine(H, ax.dtype)
    for t in range(T):
        a = np.matmul(Whh, h[t], out=ifogs[t])
        x = ax[:, t]
        ne.evaluate("tanh((a + x) * scale) * scale + shift", out=a)
        i, f, o, g = _gate_rows(a, 4)
        c_prev, c_t, tanh_c = c[t], c[t + 1], tanh_cs[t]
        ne.evaluate("f * c_prev + i * g", out=c_t)
        ne.evaluate("tanh(c_t)", out=tanh_c)
        ne.evaluate("o * tanh_c", out=h[t + 1])
    return np.ascontiguousarray(h[1:].transpose(0, 2, 1)), c, tanh_cs, ifogs


def numexpr_backward(dhs, Whh, c, tanh_cs, ifogs):
    T = dhs.shape[0]
    da = np.empty_like(ifogs)
    dh_next, dc_next, dc = (np.zeros_like(tanh_cs[0]) for _ in range(3))
    for t in reversed(range(T)):
        i, f, o, g = _gate_rows(ifogs[t], 4)
        di, df, do, dg = _gate_rows(da[t], 4)
        dh_out, c_prev, tanh_c = dhs[t].T, c[t], tanh_cs[t]
        ne.evaluate("dc_next + (dh_out + dh_next) * o * (1 - tanh_c * tanh_c)", out=dc)
        ne.evaluate("dc * g * i * (1 - i)", out=di)
        ne.evaluate("dc * c_prev * f * (1 - f)", out=df)
        ne.evaluate("(dh_out + dh_next) * tanh_c * o * (1 - o)", out=do)
        ne.evaluate("dc * i * (1 - g * g)", out=dg)
        ne.evaluate("dc * f", out=dc_next)
        np.matmul(Whh.T, da[t], out=dh_next)
    return np.ascontiguousarray(da.transpose(0, 2, 1))


def gemms_only(T, B, H, Whh, dtype):
    h, a = np.zeros((H, B), dtype), np.empty((4 * H, B), dtype)
    for _ in range(T):
        np.matmul(Whh, h, out=a)
    for _ in range(T):
        np.matmul(Whh.T, a, out=h)


def race(T: int, H: int, B: int = 32, dtype=np.float32) -> None:
    rng = np.random.default_rng(0)
    ax = (rng.standard_normal((4 * H, T, B)) * 0.5).astype(dtype)  # units x time x batch, as the cells read it
    Whh = (rng.standard_normal((4 * H, H)) / np.sqrt(H)).astype(dtype)
    h0, c0 = (rng.standard_normal((B, H)) * 0.1).astype(dtype), (rng.standard_normal((B, H)) * 0.1).astype(dtype)
    dhs = rng.standard_normal((T, B, H)).astype(dtype)

    def engine():
        hs, _, cache = LSTMCell.forward(ax, (h0, c0), {"Whh": Whh})
        return hs, LSTMCell.backward(dhs, cache)[0]

    def twin():
        hs, c, tanh_cs, ifogs = numexpr_forward(ax, (h0, c0), Whh)
        return hs, numexpr_backward(dhs, Whh, c, tanh_cs, ifogs)

    (hs_e, da_e), (hs_n, da_n) = engine(), twin()
    # float32 rounding of the same math in another order: relative to the largest value, well under 1e-4
    for name, a, b in (("h", hs_e, hs_n), ("da", da_e, da_n)):
        spread = np.max(np.abs(a - b)) / np.max(np.abs(a))
        assert spread < 1e-4, f"the numexpr twin computes another {name}: relative difference {spread:.2e}"

    def twin_on_one_thread():  # numexpr's own threads, beside BLAS's, may cost more than they give
        previous = ne.set_num_threads(1)
        try:
            twin()
        finally:
            ne.set_num_threads(previous)

    contenders = {
        "numpy (engine)": engine,
        "numexpr": twin,
        "numexpr, 1 thread": twin_on_one_thread,
        "recurrent GEMMs alone": lambda: gemms_only(T, B, H, Whh, dtype),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, run in contenders.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    best = {name: min(ts) * 1e3 for name, ts in times.items()}
    median = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    gemm = best["recurrent GEMMs alone"]
    print(f"LSTM cell forward + backward, B={B} H={H} T={T} {np.dtype(dtype).name}, best (median) of {ROUNDS} rounds:")
    for name in contenders:
        rest = f", elementwise {best[name] - gemm:6.2f} ms" if name != "recurrent GEMMs alone" else ""
        print(f"  {name:<22} {best[name]:7.2f} ms ({median[name]:7.2f}){rest}")
    for name in ("numexpr", "numexpr, 1 thread"):
        print(
            f"  {name} / numpy: {best[name] / best['numpy (engine)']:.2f} of the cell's time, "
            f"{(best[name] - gemm) / (best['numpy (engine)'] - gemm):.2f} of its elementwise time "
            "(below 1: numexpr is faster)"
        )


def main() -> None:
    threads = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    ne.set_num_threads(threads)
    print(f"numexpr {ne.__version__} with {threads} threads, NumPy {np.__version__}")
    race(T=25, H=100)
    race(T=64, H=512)


if __name__ == "__main__":
    main()
