"""Recurrent cells as forward/backward pairs, in the notation of the CS231n RNN lecture.

Shapes: T time steps, B batch (parallel streams), H hidden units, G gates per unit (1 rnn, 4 lstm, 3 gru).

Only the recurrence lives here. The input projection ``ax = Wxh x + bh`` of a whole sequence is computed
by the caller in one shot (``charrnn.model.input_projection``: a column gather for characters, one matmul for
a lower layer's h), and the weight gradients are formed by the caller as single matmuls from what
``backward`` returns:

    forward(ax (G*H,T,B), state, p) -> hs (T,B,H), new_state, cache
    backward(dhs (T,B,H), cache)    -> dax (T,B,G*H), dah (T,B,G*H), extra grads

``dax`` is the gradient on the input projection (so dbh = sum dax, dWxh from dax and the inputs) and ``dah``
on the recurrent projection ``h_{t-1} Whh^T`` (so dWhh = dah^T h_{t-1}). They differ only in the GRU, where
the reset gate sits between ``Whh h`` and the candidate.

A state is a tuple of (B,H) arrays: ``(h,)`` for rnn and gru, ``(h, c)`` for lstm. The state gradient at the
end of the sequence is zero: training is truncated backpropagation through time.

Inside, the recurrence runs units x batch (the gist's column vectors, B of them side by side): h_t is (H,B)
and the gates (G*H,B). The per-step product is then Whh h_{t-1}, (G*H,H) x (H,B), which OpenBLAS runs much
faster at B=32 than the (B,H) x (H,G*H) product of the batch-major layout, and each gate is a contiguous
block of rows. ``ax`` comes units x time x batch, so each step reads its (G*H,B) slice in runs of B
contiguous values; hs and the gradients go back to the model batch-major, transposed once per sequence.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """0.5 * tanh(0.5 * x) + 0.5, into ``out`` when given (which may be x itself)."""
    # tanh form: no overflow warnings for large |x|, unlike 1 / (1 + exp(-x))
    out = np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def _units_by_batch(state: np.ndarray, T: int) -> np.ndarray:
    """(T+1,H,B) with the batch-major state (B,H) transposed into index 0: ``buf[1:]`` receives h_1..h_T and
    ``buf[:-1]`` is then h_{t-1} for every t, without a copy."""
    buf = np.empty((T + 1, *state.shape[::-1]), dtype=state.dtype)
    buf[0] = state.T
    return buf


def _batch_major(units: np.ndarray) -> np.ndarray:
    """(n,B,X) contiguous from (n,X,B): one copy per sequence, into the model's layout."""
    return np.ascontiguousarray(units.transpose(0, 2, 1))


def _gate_rows(x, n):
    """Split the second-to-last axis of x (..., n*H, B) into n views of (..., H, B): contiguous blocks."""
    H = x.shape[-2] // n
    return tuple(x[..., k * H : (k + 1) * H, :] for k in range(n))


# --------------------------------------------------------------------------------------------- vanilla RNN
def rnn_step_forward(ax_t, h_prev, Whh, out=None):
    """h_t = tanh(Whh h_{t-1} + Wxh x_t + bh), units x batch (the gist's column vectors, B of them side by
    side): ``h_prev`` (H,B) and the input term ax_t = Wxh x_t + bh (H,B) precomputed. Written into ``out``
    (H,B) when given."""
    a = np.matmul(Whh, h_prev, out=out)
    a += ax_t
    return np.tanh(a, out=a)


def rnn_step_backward(dh, dtanh_t, out=None):
    """Backprop through tanh: the gradient on the pre-activation of step t, dh * tanh'(a_t), where
    tanh'(a_t) = 1 - h_t^2 comes precomputed for all t (it does not depend on the recurrence)."""
    return np.multiply(dh, dtanh_t, out=out)


class RNNCell:
    gates = 1
    state_names = ("h",)

    @staticmethod
    def forward(ax, state, p):
        T = ax.shape[1]
        h = _units_by_batch(state[0], T)  # (T+1,H,B): h[t] is h_{t-1} of step t
        for t in range(T):
            rnn_step_forward(ax[:, t], h[t], p["Whh"], out=h[t + 1])
        batch_major = _batch_major(h)
        hs = batch_major[1:]
        cache = {"hs": hs, "h_prev": batch_major[:-1], "h_units": h[1:], "Whh": p["Whh"]}
        return hs, (hs[-1].copy(),), cache

    @staticmethod
    def backward(dhs, cache):
        h_units, Whh = cache["h_units"], cache["Whh"]
        dtanh = np.multiply(h_units, h_units)  # (T,H,B), in place into one array
        np.subtract(1.0, dtanh, out=dtanh)
        da = np.empty_like(dtanh)
        dh = np.empty_like(dtanh[0])
        dh_next = np.zeros_like(dtanh[0])
        for t in reversed(range(dhs.shape[0])):
            np.add(dhs[t].T, dh_next, out=dh)  # from the output at t and from step t+1
            rnn_step_backward(dh, dtanh[t], out=da[t])
            np.matmul(Whh.T, da[t], out=dh_next)
        da = _batch_major(da)
        return da, da, {}

    @staticmethod
    def internals(cache):
        return {"h": cache["hs"]}


# -------------------------------------------------------------------------------------------------- LSTM
def lstm_gate_affine(H: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) (4H,1) such that gates = tanh(a * scale) * scale + shift: the sigmoid of ``sigmoid`` for
    i, f, o (scale and shift 0.5) and tanh for g (1 and 0). One tanh over the whole (4H,B) block then
    activates all four gates."""
    scale = np.ones((4 * H, 1), dtype=dtype)
    scale[: 3 * H] = 0.5
    shift = np.zeros((4 * H, 1), dtype=dtype)
    shift[: 3 * H] = 0.5
    return scale, shift


def lstm_step_forward(ax_t, h_prev, c_prev, Whh, gate_affine, out):
    """Gates in the order i, f, o, g: c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t), units x batch: ``ax_t`` (4H,B),
    ``h_prev`` and ``c_prev`` (H,B); ``gate_affine`` from ``lstm_gate_affine``.

    Writes into ``out`` = (h_t (H,B), c_t (H,B), tanh(c_t) (H,B), ifog (4H,B)) and returns it."""
    h, c, tanh_c, ifog = out
    scale, shift = gate_affine
    a = np.matmul(Whh, h_prev, out=ifog)  # (4H,B) pre-activations, replaced by the gates below
    a += ax_t
    a *= scale
    np.tanh(a, out=a)
    a *= scale
    a += shift
    i, f, o, g = _gate_rows(ifog, 4)
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tanh_c)  # tanh_c holds i*g until it receives tanh(c_t)
    c += tanh_c
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)
    return out


# The backward pass computes the LSTM's local derivatives a block of steps at a time, just before its loop
# reaches them, into one reused buffer of at most this many (steps,4H,B) elements: at H=512 the same passes
# over all T steps at once streamed tens of megabytes through memory about ten times.
LOCAL_DERIVATIVE_BLOCK = 1 << 18


def lstm_local_derivatives(c_prev, tanh_c, ifog, out):
    """What the step backward multiplies by, for a block of steps at once (it does not depend on the recurrence).

    Writes into ``out`` = (J (n,4H,B), o * tanh'(c_t) (n,H,B)) and returns it, so that with
    dc = dc_{t+1} + dh * o * tanh'(c_t):
    da_i = dc * g * s'(i), da_f = dc * c_{t-1} * s'(f), da_o = dh * tanh(c_t) * s'(o), da_g = dc * i * tanh'(g),
    where s' = s(1-s) and tanh' = 1 - tanh^2 are written in terms of the outputs the forward kept."""
    J, o_dtanh_c = out
    i, f, o, g = _gate_rows(ifog, 4)
    np.subtract(1.0, ifog, out=J)
    J *= ifog  # s(1-s) in the i, f, o blocks; the g block is overwritten below
    J_i, J_f, J_o, J_g = _gate_rows(J, 4)
    J_i *= g
    J_f *= c_prev
    J_o *= tanh_c
    np.multiply(g, g, out=J_g)
    np.subtract(1.0, J_g, out=J_g)
    J_g *= i
    np.multiply(tanh_c, tanh_c, out=o_dtanh_c)
    np.subtract(1.0, o_dtanh_c, out=o_dtanh_c)
    o_dtanh_c *= o
    return out


def lstm_step_backward(dh, dc_next, f, J, o_dtanh_c, out, dc):
    """Gradient on the gate pre-activations (4H,B), written into ``out``; ``dc`` (H,B) receives the gradient
    on c_t, and ``dc_next`` (H,B), which holds the one on c_t from step t+1, receives the one on c_{t-1}."""
    np.multiply(dh, o_dtanh_c, out=dc)
    dc += dc_next
    di, df, do, dg = _gate_rows(out, 4)
    J_i, J_f, J_o, J_g = _gate_rows(J, 4)
    np.multiply(dc, J_i, out=di)
    np.multiply(dc, J_f, out=df)
    np.multiply(dh, J_o, out=do)
    np.multiply(dc, J_g, out=dg)
    np.multiply(dc, f, out=dc_next)
    return out


class LSTMCell:
    gates = 4
    state_names = ("h", "c")

    @staticmethod
    def forward(ax, state, p):
        G, T, B = ax.shape
        h = _units_by_batch(state[0], T)  # (T+1,H,B): h[t] and c[t] are h_{t-1} and c_{t-1} of step t
        c = _units_by_batch(state[1], T)
        tanh_cs = np.empty_like(h[1:])
        ifogs = np.empty((T, G, B), dtype=ax.dtype)
        gate_affine = lstm_gate_affine(G // 4, ax.dtype)
        for t in range(T):
            lstm_step_forward(
                ax[:, t], h[t], c[t], p["Whh"], gate_affine, out=(h[t + 1], c[t + 1], tanh_cs[t], ifogs[t])
            )
        batch_major = _batch_major(h)  # (T+1,B,H), for the layers above and the output
        hs = batch_major[1:]
        cache = {
            "hs": hs,
            "h_prev": batch_major[:-1],
            "cs": c[1:],
            "c_prev": c[:-1],
            "tanh_cs": tanh_cs,
            "ifogs": ifogs,
            "Whh": p["Whh"],
        }
        return hs, (hs[-1].copy(), c[-1].T.copy()), cache

    @staticmethod
    def backward(dhs, cache):
        Whh, ifogs, c_prev, tanh_cs = cache["Whh"], cache["ifogs"], cache["c_prev"], cache["tanh_cs"]
        T = dhs.shape[0]
        block = max(1, min(T, LOCAL_DERIVATIVE_BLOCK // ifogs[0].size))  # steps per block
        J_buffer, o_dtanh_buffer = np.empty_like(ifogs[:block]), np.empty_like(tanh_cs[:block])
        fs = _gate_rows(ifogs, 4)[1]
        da = np.empty_like(ifogs)  # (T,4H,B)
        dh, dc = np.empty_like(tanh_cs[0]), np.empty_like(tanh_cs[0])
        dh_next = np.zeros_like(tanh_cs[0])
        dc_next = np.zeros_like(tanh_cs[0])
        for end in range(T, 0, -block):
            start = max(0, end - block)
            J, o_dtanh_cs = lstm_local_derivatives(
                c_prev[start:end],
                tanh_cs[start:end],
                ifogs[start:end],
                out=(J_buffer[: end - start], o_dtanh_buffer[: end - start]),
            )
            for t in reversed(range(start, end)):
                np.add(dhs[t].T, dh_next, out=dh)
                lstm_step_backward(dh, dc_next, fs[t], J[t - start], o_dtanh_cs[t - start], out=da[t], dc=dc)
                np.matmul(Whh.T, da[t], out=dh_next)
        da = _batch_major(da)  # (T,B,4H): the model forms the weight gradients from it
        return da, da, {}

    @staticmethod
    def internals(cache):
        i, f, o, g = (gate.transpose(0, 2, 1) for gate in _gate_rows(cache["ifogs"], 4))
        return {"h": cache["hs"], "c": cache["cs"].transpose(0, 2, 1), "i": i, "f": f, "o": o, "g": g}


# --------------------------------------------------------------------------------------------------- GRU
def gru_step_forward(ax_t, h_prev, Whh, bhn, out):
    """Gates r, z and candidate n (the cuDNN/PyTorch form, so Whh h_{t-1} is one matmul for all three):
    r = s(ax_r + Whr h), z = s(ax_z + Whz h), n = tanh(ax_n + r*(Whn h + bhn)), h_t = (1-z)*n + z*h_{t-1};
    units x batch: ``ax_t`` (3H,B), ``h_prev`` (H,B), ``bhn`` (H,1).

    Writes into ``out`` = (h_t (H,B), rzn (3H,B), hn = Whn h_{t-1} + bhn (H,B), scratch (3H,B)) and returns
    it."""
    h, rzn, hn, ah = out
    H = h_prev.shape[0]
    np.matmul(Whh, h_prev, out=ah)
    np.add(ax_t[: 2 * H], ah[: 2 * H], out=rzn[: 2 * H])
    sigmoid(rzn[: 2 * H], out=rzn[: 2 * H])
    r, z, n = _gate_rows(rzn, 3)
    np.add(ah[2 * H :], bhn, out=hn)  # needed by backward
    np.multiply(r, hn, out=n)
    n += ax_t[2 * H :]
    np.tanh(n, out=n)
    # h_t = (1-z)*n + z*h_{t-1}, computed as n + z*(h_{t-1} - n)
    np.subtract(h_prev, n, out=h)
    h *= z
    h += n
    return out


def gru_local_derivatives(h_prev, rzn, hn):
    """What the step backward multiplies by, for all t at once: with dan = dh * (1-z) * tanh'(n),
    dax_r = dan * hn * s'(r), dax_z = dh * (h_{t-1} - n) * s'(z), dax_n = dan, dah_n = dan * r.
    Returns (1-z)*tanh'(n), hn*s'(r), (h_{t-1}-n)*s'(z), each (T,H,B)."""
    # in place, with one (T,H,B) temporary instead of eleven
    r, z, n = _gate_rows(rzn, 3)
    one_minus = np.subtract(1.0, z)
    J_n = np.multiply(n, n)
    np.subtract(1.0, J_n, out=J_n)
    J_n *= one_minus
    J_z = np.subtract(h_prev, n)
    J_z *= z
    J_z *= one_minus
    J_r = np.multiply(hn, r)
    J_r *= np.subtract(1.0, r, out=one_minus)
    return J_n, J_r, J_z


def gru_step_backward(dh, r, z, J_n, J_r, J_z, dax, dah, dh_direct):
    """Gradients on the input and recurrent pre-activations (3H,B), written into ``dax`` and ``dah``, and the
    direct term dh * z of dh_{t-1}, written into ``dh_direct`` (H,B)."""
    H = dh.shape[0]
    dax_r, dax_z, dan = _gate_rows(dax, 3)
    np.multiply(dh, J_n, out=dan)
    np.multiply(dan, J_r, out=dax_r)  # dr through the sigmoid
    np.multiply(dh, J_z, out=dax_z)  # dz through the sigmoid
    dah[: 2 * H] = dax[: 2 * H]
    np.multiply(dan, r, out=dah[2 * H :])  # the reset gate scales the recurrent candidate term
    np.multiply(dh, z, out=dh_direct)
    return dax, dah, dh_direct


class GRUCell:
    gates = 3
    state_names = ("h",)

    @staticmethod
    def forward(ax, state, p):
        G, T, B = ax.shape
        h = _units_by_batch(state[0], T)  # (T+1,H,B): h[t] is h_{t-1} of step t
        rzns = np.empty((T, G, B), dtype=ax.dtype)
        hns = np.empty_like(h[1:])
        ah = np.empty_like(rzns[0])
        bhn = p["bhn"][:, None]
        for t in range(T):
            gru_step_forward(ax[:, t], h[t], p["Whh"], bhn, out=(h[t + 1], rzns[t], hns[t], ah))
        batch_major = _batch_major(h)
        hs = batch_major[1:]
        cache = {
            "hs": hs,
            "rzns": rzns,
            "hns": hns,
            "h_prev": batch_major[:-1],
            "h_prev_units": h[:-1],
            "Whh": p["Whh"],
        }
        return hs, (hs[-1].copy(),), cache

    @staticmethod
    def backward(dhs, cache):
        Whh, rzns = cache["Whh"], cache["rzns"]
        J_n, J_r, J_z = gru_local_derivatives(cache["h_prev_units"], rzns, cache["hns"])
        rs, zs, _ = _gate_rows(rzns, 3)
        H = dhs.shape[2]
        dax = np.empty_like(rzns)
        dah = np.empty_like(rzns)
        dh, dh_direct = np.empty_like(J_n[0]), np.empty_like(J_n[0])
        dh_next = np.zeros_like(J_n[0])
        for t in reversed(range(dhs.shape[0])):
            np.add(dhs[t].T, dh_next, out=dh)
            gru_step_backward(dh, rs[t], zs[t], J_n[t], J_r[t], J_z[t], dax[t], dah[t], dh_direct)
            np.matmul(Whh.T, dah[t], out=dh_next)
            dh_next += dh_direct
        dbhn = dah[:, 2 * H :].sum(axis=(0, 2))
        return _batch_major(dax), _batch_major(dah), {"bhn": dbhn}

    @staticmethod
    def internals(cache):
        r, z, n = (gate.transpose(0, 2, 1) for gate in _gate_rows(cache["rzns"], 3))
        return {"h": cache["hs"], "r": r, "z": z, "n": n}


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
