"""Recurrent cells as forward/backward pairs, in the notation of the CS231n RNN lecture.

Shapes: T time steps, B batch (parallel streams), H hidden units, G gates per unit (1 rnn, 4 lstm, 3 gru).

Only the recurrence lives here. The input projection ``ax = x Wxh^T + bh`` of a whole sequence is computed
by the caller in one shot (row indexing for characters, one matmul for a lower layer's h), and the weight
gradients are formed by the caller as single matmuls from what ``backward`` returns:

    forward(ax (T,B,G*H), state, p) -> hs (T,B,H), new_state, cache
    backward(dhs (T,B,H), cache)    -> dax (T,B,G*H), dah (T,B,G*H), extra grads

``dax`` is the gradient on the input projection (so dbh = sum dax, dWxh from dax and the inputs) and ``dah``
on the recurrent projection ``h_{t-1} Whh^T`` (so dWhh = dah^T h_{t-1}). They differ only in the GRU, where
the reset gate sits between ``Whh h`` and the candidate.

A state is a tuple of (B,H) arrays: ``(h,)`` for rnn and gru, ``(h, c)`` for lstm. The state gradient at the
end of the sequence is zero: training is truncated backpropagation through time.
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


def _sequence_buffer(h0: np.ndarray, T: int) -> np.ndarray:
    """(T+1,B,H) with h0 at index 0: ``buf[1:]`` receives h_1..h_T and ``buf[:-1]`` is then h_{t-1} for every
    t, without a copy."""
    buf = np.empty((T + 1, *h0.shape), dtype=h0.dtype)
    buf[0] = h0
    return buf


# --------------------------------------------------------------------------------------------- vanilla RNN
def rnn_step_forward(ax_t, h_prev, Whh, out=None):
    """h_t = tanh(Wxh x_t + Whh h_{t-1} + bh), with the input term ax_t = Wxh x_t + bh precomputed.
    Written into ``out`` (B,H) when given."""
    a = np.matmul(h_prev, Whh.T, out=out)
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
        T = ax.shape[0]
        h = _sequence_buffer(state[0], T)  # (T+1,B,H): h[t] is h_{t-1} of step t
        for t in range(T):
            rnn_step_forward(ax[t], h[t], p["Whh"], out=h[t + 1])
        hs = h[1:]
        cache = {"hs": hs, "h_prev": h[:-1], "Whh": p["Whh"]}
        return hs, (hs[-1].copy(),), cache

    @staticmethod
    def backward(dhs, cache):
        hs, Whh = cache["hs"], cache["Whh"]
        dtanh = np.multiply(hs, hs)  # (T,B,H), in place into one array
        np.subtract(1.0, dtanh, out=dtanh)
        da = np.empty_like(dhs)
        dh = np.empty_like(dhs[0])
        dh_next = np.zeros_like(dhs[0])
        for t in reversed(range(dhs.shape[0])):
            np.add(dhs[t], dh_next, out=dh)  # from the output at t and from step t+1
            rnn_step_backward(dh, dtanh[t], out=da[t])
            np.matmul(da[t], Whh, out=dh_next)
        return da, da, {}

    @staticmethod
    def internals(cache):
        return {"h": cache["hs"]}


# -------------------------------------------------------------------------------------------------- LSTM
def _gates(x, n):
    """Split the last axis of x (..., n*H) into n views of (..., H)."""
    H = x.shape[-1] // n
    return tuple(x[..., k * H : (k + 1) * H] for k in range(n))


def lstm_gate_affine(H: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) (4H,) such that gates = tanh(a * scale) * scale + shift: the sigmoid of ``sigmoid`` for
    i, f, o (scale and shift 0.5) and tanh for g (1 and 0). One tanh over the contiguous (B,4H) block then
    activates all four gates, instead of four passes over the strided i,f,o columns and one over g."""
    scale = np.ones(4 * H, dtype=dtype)
    scale[: 3 * H] = 0.5
    shift = np.zeros(4 * H, dtype=dtype)
    shift[: 3 * H] = 0.5
    return scale, shift


def lstm_step_forward(ax_t, h_prev, c_prev, Whh, gate_affine, out):
    """Gates in the order i, f, o, g: c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t); ``gate_affine`` from
    ``lstm_gate_affine``.

    Writes into ``out`` = (h_t (B,H), c_t (B,H), tanh(c_t) (B,H), ifog (B,4H)) and returns it."""
    h, c, tanh_c, ifog = out
    scale, shift = gate_affine
    a = np.matmul(h_prev, Whh.T, out=ifog)  # (B,4H) pre-activations, replaced by the gates below
    a += ax_t
    a *= scale
    np.tanh(a, out=a)
    a *= scale
    a += shift
    i, f, o, g = _gates(ifog, 4)
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tanh_c)  # tanh_c holds i*g until it receives tanh(c_t)
    c += tanh_c
    np.tanh(c, out=tanh_c)
    np.multiply(o, tanh_c, out=h)
    return out


# The backward pass computes the LSTM's local derivatives a block of steps at a time, just before its loop
# reaches them, into one reused buffer of at most this many (steps,B,4H) elements: at H=512 the same passes
# over all T steps at once streamed tens of megabytes through memory about ten times.
LOCAL_DERIVATIVE_BLOCK = 1 << 18


def lstm_local_derivatives(c_prev, tanh_c, ifog, out):
    """What the step backward multiplies by, for a block of steps at once (it does not depend on the recurrence).

    Writes into ``out`` = (J (n,B,4H), o * tanh'(c_t) (n,B,H)) and returns it, so that with
    dc = dc_{t+1} + dh * o * tanh'(c_t):
    da_i = dc * g * s'(i), da_f = dc * c_{t-1} * s'(f), da_o = dh * tanh(c_t) * s'(o), da_g = dc * i * tanh'(g),
    where s' = s(1-s) and tanh' = 1 - tanh^2 are written in terms of the outputs the forward kept."""
    J, o_dtanh_c = out
    i, f, o, g = _gates(ifog, 4)
    np.subtract(1.0, ifog, out=J)
    J *= ifog  # s(1-s) in the i, f, o blocks; the g block is overwritten below
    J_i, J_f, J_o, J_g = _gates(J, 4)
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
    """Gradient on the gate pre-activations (B,4H), written into ``out``; ``dc`` (B,H) receives the gradient
    on c_t, and ``dc_next`` (B,H), which holds the one on c_t from step t+1, receives the one on c_{t-1}."""
    np.multiply(dh, o_dtanh_c, out=dc)
    dc += dc_next
    di, df, do, dg = _gates(out, 4)
    J_i, J_f, J_o, J_g = _gates(J, 4)
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
        T, B, G = ax.shape
        h = _sequence_buffer(state[0], T)  # (T+1,B,H): h[t] and c[t] are h_{t-1} and c_{t-1} of step t
        c = _sequence_buffer(state[1], T)
        tanh_cs = np.empty_like(h[1:])
        ifogs = np.empty_like(ax)
        gate_affine = lstm_gate_affine(G // 4, ax.dtype)
        for t in range(T):
            lstm_step_forward(ax[t], h[t], c[t], p["Whh"], gate_affine,
                              out=(h[t + 1], c[t + 1], tanh_cs[t], ifogs[t]))
        hs, cs = h[1:], c[1:]
        cache = {"hs": hs, "cs": cs, "tanh_cs": tanh_cs, "ifogs": ifogs, "h_prev": h[:-1], "c_prev": c[:-1],
                 "Whh": p["Whh"]}
        return hs, (hs[-1].copy(), cs[-1].copy()), cache

    @staticmethod
    def backward(dhs, cache):
        Whh, ifogs, c_prev, tanh_cs = cache["Whh"], cache["ifogs"], cache["c_prev"], cache["tanh_cs"]
        T = dhs.shape[0]
        block = max(1, min(T, LOCAL_DERIVATIVE_BLOCK // ifogs[0].size))  # steps per block
        J_buffer, o_dtanh_buffer = np.empty_like(ifogs[:block]), np.empty_like(dhs[:block])
        fs = _gates(ifogs, 4)[1]
        da = np.empty_like(ifogs)
        dh, dc = np.empty_like(dhs[0]), np.empty_like(dhs[0])
        dh_next = np.zeros_like(dhs[0])
        dc_next = np.zeros_like(dhs[0])
        for end in range(T, 0, -block):
            start = max(0, end - block)
            J, o_dtanh_cs = lstm_local_derivatives(c_prev[start:end], tanh_cs[start:end], ifogs[start:end],
                                                   out=(J_buffer[: end - start], o_dtanh_buffer[: end - start]))
            for t in reversed(range(start, end)):
                np.add(dhs[t], dh_next, out=dh)
                lstm_step_backward(dh, dc_next, fs[t], J[t - start], o_dtanh_cs[t - start], out=da[t], dc=dc)
                np.matmul(da[t], Whh, out=dh_next)
        return da, da, {}

    @staticmethod
    def internals(cache):
        i, f, o, g = _gates(cache["ifogs"], 4)
        return {"h": cache["hs"], "c": cache["cs"], "i": i, "f": f, "o": o, "g": g}


# --------------------------------------------------------------------------------------------------- GRU
def gru_step_forward(ax_t, h_prev, Whh, bhn, out):
    """Gates r, z and candidate n (the cuDNN/PyTorch form, so Whh h_{t-1} is one matmul for all three):
    r = s(ax_r + Whr h), z = s(ax_z + Whz h), n = tanh(ax_n + r*(Whn h + bhn)), h_t = (1-z)*n + z*h_{t-1}.

    Writes into ``out`` = (h_t (B,H), rzn (B,3H), hn = Whn h_{t-1} + bhn (B,H), scratch (B,3H)) and returns
    it."""
    h, rzn, hn, ah = out
    H = h_prev.shape[1]
    np.matmul(h_prev, Whh.T, out=ah)
    np.add(ax_t[:, : 2 * H], ah[:, : 2 * H], out=rzn[:, : 2 * H])
    sigmoid(rzn[:, : 2 * H], out=rzn[:, : 2 * H])
    r, z, n = _gates(rzn, 3)
    np.add(ah[:, 2 * H :], bhn, out=hn)  # needed by backward
    np.multiply(r, hn, out=n)
    n += ax_t[:, 2 * H :]
    np.tanh(n, out=n)
    # h_t = (1-z)*n + z*h_{t-1}, computed as n + z*(h_{t-1} - n)
    np.subtract(h_prev, n, out=h)
    h *= z
    h += n
    return out


def gru_local_derivatives(h_prev, rzn, hn):
    """What the step backward multiplies by, for all t at once: with dan = dh * (1-z) * tanh'(n),
    dax_r = dan * hn * s'(r), dax_z = dh * (h_{t-1} - n) * s'(z), dax_n = dan, dah_n = dan * r.
    Returns (1-z)*tanh'(n), hn*s'(r), (h_{t-1}-n)*s'(z), each (T,B,H)."""
    # in place, with one (T,B,H) temporary instead of eleven
    r, z, n = _gates(rzn, 3)
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
    """Gradients on the input and recurrent pre-activations (B,3H), written into ``dax`` and ``dah``, and the
    direct term dh * z of dh_{t-1}, written into ``dh_direct`` (B,H)."""
    H = dh.shape[1]
    dax_r, dax_z, dan = _gates(dax, 3)
    np.multiply(dh, J_n, out=dan)
    np.multiply(dan, J_r, out=dax_r)  # dr through the sigmoid
    np.multiply(dh, J_z, out=dax_z)  # dz through the sigmoid
    dah[:, : 2 * H] = dax[:, : 2 * H]
    np.multiply(dan, r, out=dah[:, 2 * H :])  # the reset gate scales the recurrent candidate term
    np.multiply(dh, z, out=dh_direct)
    return dax, dah, dh_direct


class GRUCell:
    gates = 3
    state_names = ("h",)

    @staticmethod
    def forward(ax, state, p):
        T, B, G = ax.shape
        h = _sequence_buffer(state[0], T)  # (T+1,B,H): h[t] is h_{t-1} of step t
        rzns = np.empty_like(ax)
        hns = np.empty_like(h[1:])
        ah = np.empty_like(ax[0])
        for t in range(T):
            gru_step_forward(ax[t], h[t], p["Whh"], p["bhn"], out=(h[t + 1], rzns[t], hns[t], ah))
        hs = h[1:]
        cache = {"hs": hs, "rzns": rzns, "hns": hns, "h_prev": h[:-1], "Whh": p["Whh"]}
        return hs, (hs[-1].copy(),), cache

    @staticmethod
    def backward(dhs, cache):
        Whh, rzns = cache["Whh"], cache["rzns"]
        J_n, J_r, J_z = gru_local_derivatives(cache["h_prev"], rzns, cache["hns"])
        rs, zs, _ = _gates(rzns, 3)
        H = dhs.shape[2]
        dax = np.empty_like(rzns)
        dah = np.empty_like(rzns)
        dh, dh_direct = np.empty_like(dhs[0]), np.empty_like(dhs[0])
        dh_next = np.zeros_like(dhs[0])
        for t in reversed(range(dhs.shape[0])):
            np.add(dhs[t], dh_next, out=dh)
            gru_step_backward(dh, rs[t], zs[t], J_n[t], J_r[t], J_z[t], dax[t], dah[t], dh_direct)
            np.matmul(dah[t], Whh, out=dh_next)
            dh_next += dh_direct
        return dax, dah, {"bhn": dah[..., 2 * H :].sum(axis=(0, 1))}

    @staticmethod
    def internals(cache):
        r, z, n = _gates(cache["rzns"], 3)
        return {"h": cache["hs"], "r": r, "z": z, "n": n}


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
