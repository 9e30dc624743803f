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


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |x|, unlike 1 / (1 + exp(-x))
    return 0.5 * np.tanh(0.5 * x) + 0.5


def _shifted(hs: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """h_{t-1} for every t: (T,B,H) from the sequence of hs and the initial h0."""
    prev = np.empty_like(hs)
    prev[0] = h0
    prev[1:] = hs[:-1]
    return prev


# --------------------------------------------------------------------------------------------- vanilla RNN
def rnn_step_forward(ax_t, h_prev, Whh):
    """h_t = tanh(Wxh x_t + Whh h_{t-1} + bh), with the input term ax_t = Wxh x_t + bh precomputed."""
    return np.tanh(ax_t + h_prev @ Whh.T)


def rnn_step_backward(dh, h):
    """Backprop through tanh; returns the gradient on the pre-activation of step t."""
    return dh * (1.0 - h * h)


class RNNCell:
    gates = 1
    state_names = ("h",)

    @staticmethod
    def forward(ax, state, p):
        (h_prev,) = state
        hs = np.empty(ax.shape, dtype=ax.dtype)  # (T,B,H)
        for t in range(ax.shape[0]):
            h_prev = hs[t] = rnn_step_forward(ax[t], h_prev, p["Whh"])
        cache = {"hs": hs, "h_prev": _shifted(hs, state[0]), "Whh": p["Whh"]}
        return hs, (hs[-1].copy(),), cache

    @staticmethod
    def backward(dhs, cache):
        hs, Whh = cache["hs"], cache["Whh"]
        da = np.empty_like(dhs)
        dh_next = np.zeros_like(dhs[0])
        for t in reversed(range(dhs.shape[0])):
            da[t] = rnn_step_backward(dhs[t] + dh_next, hs[t])
            dh_next = da[t] @ Whh
        return da, da, {}

    @staticmethod
    def internals(cache):
        return {"h": cache["hs"]}


# -------------------------------------------------------------------------------------------------- LSTM
def lstm_step_forward(ax_t, h_prev, c_prev, Whh):
    """Gates in the order i, f, o, g: c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t)."""
    H = h_prev.shape[1]
    a = ax_t + h_prev @ Whh.T  # (B,4H)
    ifog = np.empty_like(a)
    ifog[:, : 3 * H] = sigmoid(a[:, : 3 * H])
    ifog[:, 3 * H :] = np.tanh(a[:, 3 * H :])
    i, f, o, g = ifog[:, :H], ifog[:, H : 2 * H], ifog[:, 2 * H : 3 * H], ifog[:, 3 * H :]
    c = f * c_prev + i * g
    tanh_c = np.tanh(c)
    return o * tanh_c, c, tanh_c, ifog


def lstm_step_backward(dh, dc_next, c_prev, tanh_c, ifog):
    """Returns the gradient on the gate pre-activations (B,4H) and on c_{t-1}."""
    H = dh.shape[1]
    i, f, o, g = ifog[:, :H], ifog[:, H : 2 * H], ifog[:, 2 * H : 3 * H], ifog[:, 3 * H :]
    dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
    dgates = np.empty_like(ifog)
    dgates[:, :H] = dc * g  # di
    dgates[:, H : 2 * H] = dc * c_prev  # df
    dgates[:, 2 * H : 3 * H] = dh * tanh_c  # do
    dgates[:, 3 * H :] = dc * i  # dg
    # through the nonlinearities: sigmoid' = s(1-s) for i,f,o and tanh' = 1-g^2 for g
    sig = ifog[:, : 3 * H]
    dgates[:, : 3 * H] *= sig * (1.0 - sig)
    dgates[:, 3 * H :] *= 1.0 - g * g
    return dgates, dc * f


class LSTMCell:
    gates = 4
    state_names = ("h", "c")

    @staticmethod
    def forward(ax, state, p):
        h_prev, c_prev = state
        T, B, G = ax.shape
        H = G // 4
        hs = np.empty((T, B, H), dtype=ax.dtype)
        cs = np.empty_like(hs)
        tanh_cs = np.empty_like(hs)
        ifogs = np.empty_like(ax)
        for t in range(T):
            h_prev, c_prev, tanh_cs[t], ifogs[t] = lstm_step_forward(ax[t], h_prev, c_prev, p["Whh"])
            hs[t], cs[t] = h_prev, c_prev
        cache = {
            "hs": hs, "cs": cs, "tanh_cs": tanh_cs, "ifogs": ifogs,
            "h_prev": _shifted(hs, state[0]), "c_prev": _shifted(cs, state[1]), "Whh": p["Whh"],
        }
        return hs, (hs[-1].copy(), cs[-1].copy()), cache

    @staticmethod
    def backward(dhs, cache):
        Whh, c_prev, tanh_cs, ifogs = cache["Whh"], cache["c_prev"], cache["tanh_cs"], cache["ifogs"]
        da = np.empty_like(ifogs)
        dh_next = np.zeros_like(dhs[0])
        dc_next = np.zeros_like(dhs[0])
        for t in reversed(range(dhs.shape[0])):
            da[t], dc_next = lstm_step_backward(dhs[t] + dh_next, dc_next, c_prev[t], tanh_cs[t], ifogs[t])
            dh_next = da[t] @ Whh
        return da, da, {}

    @staticmethod
    def internals(cache):
        H = cache["hs"].shape[2]
        ifogs = cache["ifogs"]
        return {
            "h": cache["hs"], "c": cache["cs"],
            "i": ifogs[..., :H], "f": ifogs[..., H : 2 * H], "o": ifogs[..., 2 * H : 3 * H], "g": ifogs[..., 3 * H :],
        }


# --------------------------------------------------------------------------------------------------- GRU
def gru_step_forward(ax_t, h_prev, Whh, bhn):
    """Gates r, z and candidate n (the cuDNN/PyTorch form, so Whh h_{t-1} is one matmul for all three):
    r = s(ax_r + Whr h), z = s(ax_z + Whz h), n = tanh(ax_n + r*(Whn h + bhn)), h_t = (1-z)*n + z*h_{t-1}."""
    H = h_prev.shape[1]
    ah = h_prev @ Whh.T  # (B,3H)
    ah[:, 2 * H :] += bhn
    rzn = np.empty_like(ah)
    rzn[:, : 2 * H] = sigmoid(ax_t[:, : 2 * H] + ah[:, : 2 * H])
    r, z = rzn[:, :H], rzn[:, H : 2 * H]
    hn = ah[:, 2 * H :]  # Whn h_{t-1} + bhn, needed by backward
    rzn[:, 2 * H :] = np.tanh(ax_t[:, 2 * H :] + r * hn)
    n = rzn[:, 2 * H :]
    return (1.0 - z) * n + z * h_prev, rzn, hn.copy()


def gru_step_backward(dh, h_prev, rzn, hn):
    """Returns (dax_t, dah_t, dh_{t-1} direct term): gradients on the input and recurrent pre-activations."""
    H = dh.shape[1]
    r, z, n = rzn[:, :H], rzn[:, H : 2 * H], rzn[:, 2 * H :]
    dan = dh * (1.0 - z) * (1.0 - n * n)
    dax = np.empty_like(rzn)
    dax[:, :H] = dan * hn * r * (1.0 - r)  # dr through the sigmoid
    dax[:, H : 2 * H] = dh * (h_prev - n) * z * (1.0 - z)  # dz through the sigmoid
    dax[:, 2 * H :] = dan
    dah = dax.copy()
    dah[:, 2 * H :] *= r  # the reset gate scales the recurrent candidate term
    return dax, dah, dh * z


class GRUCell:
    gates = 3
    state_names = ("h",)

    @staticmethod
    def forward(ax, state, p):
        (h_prev,) = state
        T, B, G = ax.shape
        H = G // 3
        hs = np.empty((T, B, H), dtype=ax.dtype)
        rzns = np.empty_like(ax)
        hns = np.empty_like(hs)
        for t in range(T):
            h_prev, rzns[t], hns[t] = gru_step_forward(ax[t], h_prev, p["Whh"], p["bhn"])
            hs[t] = h_prev
        cache = {"hs": hs, "rzns": rzns, "hns": hns, "h_prev": _shifted(hs, state[0]), "Whh": p["Whh"]}
        return hs, (hs[-1].copy(),), cache

    @staticmethod
    def backward(dhs, cache):
        Whh, h_prev, rzns, hns = cache["Whh"], cache["h_prev"], cache["rzns"], cache["hns"]
        H = dhs.shape[2]
        dax = np.empty_like(rzns)
        dah = np.empty_like(rzns)
        dh_next = np.zeros_like(dhs[0])
        for t in reversed(range(dhs.shape[0])):
            dax[t], dah[t], dh_direct = gru_step_backward(dhs[t] + dh_next, h_prev[t], rzns[t], hns[t])
            dh_next = dh_direct + dah[t] @ Whh
        return dax, dah, {"bhn": dah[..., 2 * H :].sum(axis=(0, 1))}

    @staticmethod
    def internals(cache):
        H = cache["hs"].shape[2]
        rzns = cache["rzns"]
        return {"h": cache["hs"], "r": rzns[..., :H], "z": rzns[..., H : 2 * H], "n": rzns[..., 2 * H :]}


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
