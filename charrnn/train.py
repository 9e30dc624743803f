"""The training loop: truncated BPTT over parallel streams, evaluation, sampling, checkpoints, exact resume.

The trainer reports through :class:`Callback` objects and never prints or tracks anything itself, so the
same loop runs under a notebook, the Hydra app (which plugs MLflow in) or a test.

Losses are reported per character in nats (``train/loss``) and in bits (``val/bpc`` = nats / ln 2). The gist
prints its smoothed loss summed over seq_length characters: gist loss = ``train/smooth_loss`` * seq_length,
so its "loss 42.9" at T=25 is 1.72 nats (2.48 bits) per character.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .cadence import sure_round_due
from .cells import CELLS
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .checks import check_int, check_number
from .data import BatchStream, Vocab, eval_stream_starts, iter_eval_batches
from .errors import ConfigError, DataError
from .model import ModelConfig, dropout_masks, init_params, init_state, loss_and_grads, stream_nats
from .optim import CLIP_MODES, clip_gradients, decay_weights, flat_views, make_optimizer
from .sample import sample
from .schedule import ScheduleConfig, learning_rate

# Below this many FLOPs in one time step's recurrent matmul (2*B*H*G*H) a BLAS call lasts microseconds, the
# order of what waking and joining a second thread costs, and on a shared machine a threaded call also waits for
# a descheduled thread: with five other processes on two cores the gist's model trained 6x slower on two BLAS
# threads than on one. Such models train on one thread.
SINGLE_THREAD_MAX_STEP_FLOPS = 1e6
# A validation loss over this many times that of guessing uniformly (ln V nats/char) is divergence: no model a
# run should continue from is that sure of the wrong characters.
DIVERGED_LOSS_FACTOR = 10
# The metric a run's best validation loss is logged as, at every evaluation: the lowest val/loss so far (carried
# across a resume in the checkpoint), so its latest value is the run's best. The one name of "best" in every
# layer: the apps read it back, the sweep's parent summarises its children under it, tables rank by it.
METRIC_BEST_VAL_LOSS = "val/best_loss"


def blas_threads(model_config: ModelConfig, batch_size: int) -> int | None:
    """1 when the model's per-step matmuls are too small to split across threads, else None (BLAS decides)."""
    H = model_config.hidden_size
    step_flops = 2 * batch_size * H * CELLS[model_config.cell].gates * H
    return 1 if step_flops < SINGLE_THREAD_MAX_STEP_FLOPS else None


@dataclass
class TrainConfig:
    """How long and how to train. ``None`` disables a stop condition; at least one must be set."""

    seq_length: int = 25
    batch_size: int = 1
    max_iters: int | None = 10_000
    max_seconds: float | None = None
    target_val_loss: float | None = None  # nats per character
    seed: int = 42
    log_every: int = 100
    # None: automatic -- at least MIN_EVAL_ROUNDS rounds over the run's max_iters or max_seconds (charrnn.cadence),
    # and at a logging step whenever the time spent outside training steps stays within eval_max_fraction of the
    # run's wall time; an integer: every that many iterations
    eval_every: int | None = None
    eval_max_fraction: float = 0.05
    eval_batch_size: int = 32  # evaluation runs this many parallel streams over the validation text
    eval_max_chars: int | None = 100_000  # evaluate on the head of the validation text only
    sample_every: int | None = None  # None: with each evaluation; 0 disables samples
    sample_length: int = 200
    sample_temperature: float = 1.0
    # early stopping: stop once this many evaluations in a row have not lowered the best validation loss
    patience: int | None = None

    def __post_init__(self):
        for name in ("seq_length", "batch_size", "log_every", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        check_int("eval_every", self.eval_every, 1, allow_none=True)  # None: the automatic cadence
        check_number("eval_max_fraction", self.eval_max_fraction, minimum=0.0, below=1.0, positive=True)
        for name in ("seed", "sample_length"):
            check_int(name, getattr(self, name), 0)
        check_int("sample_every", self.sample_every, 0, allow_none=True)  # None: with each evaluation
        check_int("patience", self.patience, 1, allow_none=True)
        check_int("max_iters", self.max_iters, 0, allow_none=True)
        check_int("eval_max_chars", self.eval_max_chars, 2, allow_none=True)  # one input and its target
        check_number("max_seconds", self.max_seconds, positive=True, allow_none=True)
        check_number("target_val_loss", self.target_val_loss, minimum=0.0, allow_none=True)  # nats: >= 0
        check_number("sample_temperature", self.sample_temperature, positive=True)
        if self.max_iters is None and self.max_seconds is None and self.target_val_loss is None:
            raise ConfigError("no stop condition: set max_iters, max_seconds or target_val_loss")


@dataclass
class OptimConfig:
    name: str = "adagrad"
    lr: float = 0.1
    clip: float | None = 5.0  # 0 or None: no clipping
    clip_mode: str = "value"  # "value": elementwise to [-clip, clip] as in the gist; "norm": global norm
    options: dict = field(default_factory=dict)  # extra optimizer arguments (betas, decay, eps)
    # decoupled weight decay (AdamW): each update first shrinks the weight matrices, not the biases, by
    # lr * weight_decay of themselves, outside the gradient and so outside Adam's moments
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # the lr of each update, from lr

    def __post_init__(self):
        make_optimizer(self.name, self.lr, **self.options)  # checks the name, lr and options in one place
        if self.clip_mode not in CLIP_MODES:
            raise ConfigError(f"must be one of {', '.join(CLIP_MODES)}, got {self.clip_mode!r}", "clip_mode")
        check_number("clip", self.clip, minimum=0.0, allow_none=True)
        check_number("weight_decay", self.weight_decay, minimum=0.0)
        if self.weight_decay and self.name != "adam":
            raise ConfigError(
                f"is decoupled weight decay for adam (AdamW), not for {self.name}: use adam or weight_decay=0",
                "weight_decay",
            )
        if isinstance(self.schedule, dict):  # from a config file or a checkpoint's JSON
            self.schedule = ScheduleConfig(**self.schedule)


class StopReason(str, enum.Enum):  # noqa: UP042 (StrEnum would change what str() and f-strings print)
    """Why training stopped: what code branches on (``TrainResult.reason`` says it in words, for people)."""

    MAX_ITERS = "max_iters"
    MAX_SECONDS = "max_seconds"
    TARGET_VAL_LOSS = "target_val_loss"
    PATIENCE = "patience"  # early stopping; the best model is in best.npz
    REQUESTED = "requested"  # request_stop(): a signal, a callback
    DIVERGED = "diverged"  # a non-finite loss, gradient or weight, or an exploding validation loss


@dataclass
class TrainResult:
    stop: StopReason
    reason: str
    iteration: int
    smooth_loss: float
    val_loss: float | None
    best_val_loss: float | None
    elapsed_seconds: float
    train_seconds: float = 0.0  # the part of elapsed_seconds spent in training steps
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None

    @property
    def status(self) -> str:
        """ "finished" (a limit of the config was reached), "diverged" or "interrupted"."""
        return {StopReason.DIVERGED: "diverged", StopReason.REQUESTED: "interrupted"}.get(self.stop, "finished")


_Stop = tuple[StopReason, str]  # why the loop stops, and TrainResult.reason


@dataclass
class _RunState:
    """What one run() carries from phase to phase (what a checkpoint must hold is the Trainer's)."""

    started: float = 0.0  # the perf_counter() reading at elapsed_seconds == 0
    last_round_seconds: float = 0.0  # the cost of the latest evaluation round, which spaces the automatic ones
    last_round_end: float = 0.0  # the run time when it ended
    last_ckpt: str | None = None
    best_ckpt: str | None = None


def _empty_window() -> dict:
    """The training steps since the last log line: their loss, characters and seconds."""
    return {"loss_sum": 0.0, "count": 0, "chars": 0, "seconds": 0.0}


@dataclass(frozen=True)
class StreamLosses:
    """The validation loss stream by stream. val/loss is their character-weighted mean, so one stream whose state
    runs away (an LSTM cell that, from the zero state at an unlucky place, grows without bound and never recovers)
    can lift val/loss far above what the other streams read."""

    starts: np.ndarray  # (B,) where each stream starts in the text evaluated
    nats: np.ndarray  # (B,) summed over the stream's predicted characters
    chars: np.ndarray  # (B,) the characters each stream predicted

    @property
    def loss(self) -> float:
        """Mean nats per character over every stream: val/loss."""
        return float(self.nats.sum() / self.chars.sum())

    @property
    def per_stream(self) -> np.ndarray:
        return self.nats / self.chars


def evaluate_streams(
    params, config: ModelConfig, data_ix: np.ndarray, batch_size: int, seq_length: int, max_chars: int | None
) -> StreamLosses:
    """The model's loss over (the head of) ``data_ix`` in ``batch_size`` contiguous streams from the zero state,
    each stream's state carried from window to window as in training (see :func:`iter_eval_batches`)."""
    nats = chars = state = None
    for inputs, targets, reset in iter_eval_batches(data_ix, batch_size, seq_length, max_chars):
        if reset:
            B = inputs.shape[1]
            state = init_state(config, B)
            nats, chars = np.zeros(B), np.zeros(B, dtype=np.int64)
        window_nats, state = stream_nats(params, config, inputs, targets, state)
        nats += window_nats
        chars += inputs.shape[0]
    n = len(data_ix) if max_chars is None else min(len(data_ix), max_chars)
    return StreamLosses(eval_stream_starts(n, batch_size, seq_length), nats, chars)


class Callback:
    """Hooks the trainer calls; override what you need. Metric names: train/loss, train/smooth_loss (nats per
    character), grad/norm (before clipping), optim/lr (the lr of the latest update), throughput/chars_per_s,
    val/loss, val/bpc, val/best_loss (the lowest val/loss so far: a run's best validation loss is its last
    val/best_loss), val/worst_stream_loss (the validation stream that reads worst, see :class:`StreamLosses`),
    and throughput/train_fraction and throughput/eval_fraction: the shares of the run's wall time
    so far spent in training steps and in evaluation, sampling and checkpoints (wall-clock figures, like
    chars_per_s)."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def on_sample(self, text: str, step: int) -> None: ...

    def on_checkpoint(self, path: str, step: int, is_best: bool) -> None: ...

    def on_train_end(self, result: TrainResult) -> None: ...


class PrintCallback(Callback):
    """Plain progress lines, for scripts and notebooks."""

    def on_metrics(self, metrics, step):
        print(f"iter {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)

    def on_sample(self, text, step):
        print(f"----\n{text}\n----", flush=True)


class Trainer:
    """Owns everything that changes during training, and nothing else: parameters, optimizer state, data
    cursor, hidden state, sampling RNG, counters. ``checkpoint()`` captures all of it.

    Process-wide settings are the caller's: :func:`charrnn.allocator.keep_freed_memory` (``charrnn-train`` calls
    it) lets the steps reuse freed memory instead of asking the kernel for fresh pages."""

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        optim_config: OptimConfig,
        vocab: Vocab,
        train_text: str,
        val_text: str = "",
        checkpoint_dir: str | Path | None = None,
        params: dict[str, np.ndarray] | None = None,
        metadata: dict | None = None,
    ):
        """``metadata`` is stored in every checkpoint as it is (JSON-serialisable), e.g. the corpus and split
        the text came from, so tools reading the checkpoint later can find the same text."""
        if model_config.vocab_size != vocab.size:
            raise ConfigError(f"model vocab_size={model_config.vocab_size} but the vocabulary has {vocab.size}")
        if train_config.patience is not None and not val_text:
            raise ConfigError(
                "stops on the validation loss, but there is no validation text to measure it on", "patience"
            )
        optim_config = replace(optim_config, schedule=optim_config.schedule.for_run(train_config.max_iters))
        self.model_config, self.train_config, self.optim_config = model_config, train_config, optim_config
        self.vocab = vocab
        self.train_ix = vocab.encode(train_text)
        self.val_ix = vocab.encode(val_text) if val_text else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.metadata = dict(metadata or {})
        init_rng = np.random.default_rng(train_config.seed)
        # the named arrays are views of one vector, which the optimizer updates in a few calls: change them
        # in place (trainer.params["Why"][...] = ...), never rebind them
        params = params if params is not None else init_params(model_config, init_rng)
        self.flat_params, self.params = flat_views(params)
        self.weights = [value for value in self.params.values() if value.ndim == 2]  # what weight decay shrinks
        self.optimizer = make_optimizer(optim_config.name, optim_config.lr, **optim_config.options)
        self.stream = BatchStream(self.train_ix, train_config.batch_size, train_config.seq_length)
        self.state = init_state(model_config, train_config.batch_size)
        # sampling has its own stream so that sampling more or less often never changes training
        self.sample_rng = np.random.default_rng([train_config.seed, 1])
        # and dropout its own, so that dropout changes neither the batches nor the samples' random draws
        self.dropout_rng = np.random.default_rng([train_config.seed, 2])
        self.iteration = 0
        self.smooth_loss = math.log(vocab.size)  # the loss of a uniform guess, as in the gist
        self.val_loss: float | None = None
        self.best_val_loss: float | None = None
        self.best_at: int | None = None  # the iteration best_val_loss was measured at
        self.evals_since_best = 0  # evaluations since the best one, which early stopping counts
        self.evaluated_at: int | None = None  # the iteration val_loss was measured at
        self.elapsed_seconds = 0.0
        self.train_seconds = 0.0  # within elapsed_seconds: in train_step
        self.eval_seconds = 0.0  # within elapsed_seconds: evaluating, sampling, checkpointing
        self._window = _empty_window()  # the steps since the last log line
        self._stop_reason: str | None = None
        self._callbacks: tuple[Callback, ...] = ()  # run()'s

    # ----------------------------------------------------------------------------------- checkpoints
    def checkpoint(self) -> Checkpoint:
        progress = {
            "iteration": self.iteration,
            "smooth_loss": self.smooth_loss,
            "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss,
            "best_at": self.best_at,
            "evals_since_best": self.evals_since_best,
            "evaluated_at": self.evaluated_at,
            "elapsed_seconds": self.elapsed_seconds,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "stream": self.stream.state(),
            "sample_rng": self.sample_rng.bit_generator.state,
            "dropout_rng": self.dropout_rng.bit_generator.state,
            "window": self._window,
        }
        return Checkpoint(
            params=self.params,
            vocab=self.vocab,
            model_config=self.model_config,
            train_config=asdict(self.train_config),
            optim_config=asdict(self.optim_config),
            optim_state=self.optimizer.state_dict(),
            hidden=self.state,
            progress=progress,
            metadata=self.metadata,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        train_text: str,
        val_text: str = "",
        checkpoint_dir: str | Path | None = None,
        train_config: TrainConfig | None = None,
    ) -> Trainer:
        """Resume exactly where ``path`` left off, on the same text. ``train_config`` may extend the stop
        conditions; the settings that shape the numbers (seq_length, batch_size) must stay the same."""
        ckpt = load_checkpoint(path)
        saved = TrainConfig(**ckpt.train_config)
        train_config = train_config or saved
        for name in ("seq_length", "batch_size"):
            if getattr(train_config, name) != getattr(saved, name):
                raise ConfigError(
                    f"cannot resume with {name}={getattr(train_config, name)}: the checkpoint was trained with "
                    f"{name}={getattr(saved, name)}"
                )
        optim_config = OptimConfig(**ckpt.optim_config)
        trainer = cls(
            ckpt.model_config,
            train_config,
            optim_config,
            ckpt.vocab,
            train_text,
            val_text,
            checkpoint_dir,
            params=ckpt.params,
            metadata=ckpt.metadata,
        )
        trainer.optimizer.load_state_dict(ckpt.optim_state)
        trainer.state = ckpt.hidden
        p = ckpt.progress
        trainer.iteration = p["iteration"]
        trainer.smooth_loss = p["smooth_loss"]
        trainer.val_loss, trainer.best_val_loss = p["val_loss"], p["best_val_loss"]
        trainer.evaluated_at = p.get("evaluated_at")  # absent from checkpoints written before it was kept
        trainer.best_at, trainer.evals_since_best = p.get("best_at"), p.get("evals_since_best", 0)  # likewise
        trainer.elapsed_seconds = p["elapsed_seconds"]
        # checkpoints written before these were kept count their time as training
        trainer.train_seconds = p.get("train_seconds", p["elapsed_seconds"])
        trainer.eval_seconds = p.get("eval_seconds", 0.0)
        trainer.stream.load_state(p["stream"])
        trainer.sample_rng.bit_generator.state = p["sample_rng"]
        if "dropout_rng" in p:  # absent from checkpoints written before dropout, which never drew from it
            trainer.dropout_rng.bit_generator.state = p["dropout_rng"]
        trainer._window = dict(p["window"])
        return trainer

    def _save(self, name: str) -> str | None:
        if self.checkpoint_dir is None:
            return None
        return str(save_checkpoint(self.checkpoint_dir / name, self.checkpoint()))

    # -------------------------------------------------------------------------------------- pieces
    def train_step(self) -> tuple[float, float]:
        """One iteration: next batch, forward/backward, clip, update. Returns (loss per char, grad norm);
        on a non-finite loss or gradient the parameters are left untouched."""
        inputs, targets, reset = self.stream.next_batch()
        if reset:
            self.state = init_state(self.model_config, self.train_config.batch_size)
        masks = dropout_masks(self.dropout_rng, self.model_config, *inputs.shape)
        # overflow shows up as a non-finite loss or norm, which run() reports as divergence with a reason
        with np.errstate(over="ignore", invalid="ignore"):
            loss, grads, self.state = loss_and_grads(self.params, self.model_config, inputs, targets, self.state, masks)
            flat_grad = np.concatenate([grads[name].ravel() for name in self.params])  # same layout as flat_params
            norm = clip_gradients(flat_grad, self.optim_config.clip, self.optim_config.clip_mode)
        loss_per_char = loss / inputs.shape[0]
        if math.isfinite(loss_per_char) and math.isfinite(norm):
            cfg = self.optim_config
            self.optimizer.lr = learning_rate(cfg.schedule, cfg.lr, self.iteration)
            if cfg.weight_decay:
                decay_weights(self.weights, self.optimizer.lr, cfg.weight_decay)
            self.optimizer.step(self.flat_params, flat_grad)
        return loss_per_char, norm

    def evaluate(self, data_ix: np.ndarray | None = None) -> float:
        """Mean loss per character (nats) over the validation text, streams carried as in training."""
        return self.evaluate_streams(data_ix).loss

    def evaluate_streams(self, data_ix: np.ndarray | None = None) -> StreamLosses:
        """The validation loss stream by stream (see :class:`StreamLosses`)."""
        data_ix = self.val_ix if data_ix is None else data_ix
        if data_ix is None:
            raise DataError(
                "this trainer has no validation text to evaluate on; pass val_text (from "
                "split_train_val with val_fraction > 0) or the indices to evaluate"
            )
        cfg = self.train_config
        return evaluate_streams(
            self.params, self.model_config, data_ix, cfg.eval_batch_size, cfg.seq_length, cfg.eval_max_chars
        )

    def sample(self, length: int | None = None, prime: str = "", temperature: float | None = None) -> str:
        cfg = self.train_config
        return sample(
            self.params,
            self.model_config,
            self.vocab,
            cfg.sample_length if length is None else length,
            temperature=cfg.sample_temperature if temperature is None else temperature,
            prime=prime,
            rng=self.sample_rng,
        )

    def request_stop(self, reason: str = "interrupted") -> None:
        """Ask the loop to stop after the current iteration (safe to call from a signal handler)."""
        self._stop_reason = reason

    # ---------------------------------------------------------------------------------------- loop
    def _limit_reached(self) -> _Stop | None:
        cfg = self.train_config
        if cfg.max_iters is not None and self.iteration >= cfg.max_iters:
            return StopReason.MAX_ITERS, f"reached max_iters={cfg.max_iters}"
        if cfg.max_seconds is not None and self.elapsed_seconds >= cfg.max_seconds:
            return StopReason.MAX_SECONDS, f"used the time budget max_seconds={cfg.max_seconds:g}"
        if cfg.target_val_loss is not None and self.val_loss is not None and self.val_loss <= cfg.target_val_loss:
            return (
                StopReason.TARGET_VAL_LOSS,
                f"validation loss {self.val_loss:.4f} reached target_val_loss={cfg.target_val_loss}",
            )
        if cfg.patience is not None and self.evals_since_best >= cfg.patience:
            kept = ", kept in best.npz" if self.checkpoint_dir is not None else ""
            return (
                StopReason.PATIENCE,
                f"stopped early: validation loss has not improved for patience={cfg.patience} evaluations "
                f"(best {self.best_val_loss:.4f} at iteration {self.best_at}{kept})",
            )
        return None

    def _evaluation_due(self, n: int, elapsed: float, last_round_seconds: float, last_round_end: float) -> bool:
        """Every eval_every iterations when set. Otherwise at the rounds the run's length calls for
        (:func:`charrnn.cadence.sure_round_due`), and at a logging step when a round as costly as the last one keeps
        the time spent outside training steps within eval_max_fraction of the wall time so far: the first round is
        timed, later ones are spaced by what they cost."""
        cfg = self.train_config
        if cfg.eval_every is not None:
            return n % cfg.eval_every == 0
        if sure_round_due(n, elapsed, last_round_end, cfg.max_iters, cfg.max_seconds, cfg.log_every):
            return True
        if n % cfg.log_every:
            return False
        outside = elapsed - self.train_seconds
        return outside + last_round_seconds <= cfg.eval_max_fraction * (elapsed + last_round_seconds)

    def _time_shares(self, elapsed: float) -> dict[str, float]:
        return {
            "throughput/train_fraction": self.train_seconds / max(elapsed, 1e-9),
            "throughput/eval_fraction": self.eval_seconds / max(elapsed, 1e-9),
        }

    def _val_diverged(self) -> str | None:
        """Why the validation loss just measured means divergence: over DIVERGED_LOSS_FACTOR times the loss of
        guessing uniformly (ln V nats/char), or not finite. None when it is a loss a model can have."""
        limit = DIVERGED_LOSS_FACTOR * math.log(max(self.vocab.size, 2))
        if self.val_loss <= limit:
            return None
        return (
            f"validation loss {self.val_loss:.4g} nats/char at iteration {self.iteration} is over "
            f"{DIVERGED_LOSS_FACTOR}x that of uniform guessing ({limit:.3g}); try a smaller lr "
            f"(now {self.optim_config.lr}) or clipping"
        )

    def _params_finite(self) -> bool:
        return all(np.isfinite(p).all() for p in self.params.values())

    def _evaluate_and_save(self, run: _RunState) -> None:
        """Evaluate the model as it is now, report val/loss, val/bpc, val/best_loss and val/worst_stream_loss,
        save latest.npz (and best.npz when the loss improved) into ``run``'s checkpoint paths (None without a
        checkpoint_dir)."""
        n = self.iteration
        streams = self.evaluate_streams()
        self.val_loss = streams.loss
        self.evaluated_at = n
        improved = self.best_val_loss is None or self.val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_at, self.evals_since_best = self.val_loss, n, 0
        else:
            self.evals_since_best += 1
        self._emit(
            "on_metrics",
            {
                "val/loss": self.val_loss,
                "val/bpc": self.val_loss / math.log(2),
                METRIC_BEST_VAL_LOSS: self.best_val_loss,
                "val/worst_stream_loss": float(streams.per_stream.max()),
            },
            n,
        )
        run.last_ckpt = self._save("latest.npz")
        if improved and self.checkpoint_dir is not None:
            run.best_ckpt = self._save("best.npz")
        for path, is_best in ((run.last_ckpt, False), (run.best_ckpt if improved else None, True)):
            if path is not None:
                self._emit("on_checkpoint", path, n, is_best)

    def run(self, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> TrainResult:
        """Train until a stop condition; small models train on one BLAS thread (see ``blas_threads``), and what
        the callbacks do at the end (``on_train_end``) runs on the process's own thread count."""
        self._callbacks = tuple(callbacks)
        with threadpool_limits(blas_threads(self.model_config, self.train_config.batch_size), user_api="blas"):
            result = self._run()
        self._emit("on_train_end", result)
        return result

    def _emit(self, hook: str, *args) -> None:
        """Call the :class:`Callback` method named ``hook`` on every callback of the run, in order."""
        for callback in self._callbacks:
            getattr(callback, hook)(*args)

    def _run(self) -> TrainResult:
        best_path = self.checkpoint_dir / "best.npz" if self.checkpoint_dir is not None else None
        run = _RunState(
            last_round_end=self.elapsed_seconds,
            best_ckpt=str(best_path) if best_path is not None and best_path.exists() else None,
        )
        self._emit("on_train_start", self)
        run.started = time.perf_counter() - self.elapsed_seconds
        stop = None
        while stop is None:
            stop = self._limit_reached() or self._stop_requested() or self._iteration(run)
        return self._end(run, *stop)

    def _stop_requested(self) -> _Stop | None:
        return None if self._stop_reason is None else (StopReason.REQUESTED, self._stop_reason)

    def _iteration(self, run: _RunState) -> _Stop | None:
        """A training step, then what falls due at its iteration: a log line, a sample, an evaluation round."""
        t0 = time.perf_counter()
        loss, norm = self.train_step()
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {norm}"
            return (
                StopReason.DIVERGED,
                f"{what} at iteration {self.iteration + 1}; try a smaller lr (now {self.optim_config.lr}) or clipping",
            )
        self._count_step(loss, t0)
        if self.iteration % self.train_config.log_every == 0 and (stop := self._log(norm, run)) is not None:
            return stop
        if (stop := self._round(run)) is not None:
            return stop
        self.elapsed_seconds = time.perf_counter() - run.started
        return None

    def _count_step(self, loss: float, t0: float) -> None:
        """Count the step that started at ``t0``: the iteration, the smoothed loss, training time, the log window."""
        self.iteration += 1
        self.smooth_loss = self.smooth_loss * 0.999 + loss * 0.001
        step_seconds = time.perf_counter() - t0
        self.train_seconds += step_seconds
        w = self._window
        w["loss_sum"] += loss
        w["count"] += 1
        w["chars"] += self.train_config.seq_length * self.train_config.batch_size
        w["seconds"] += step_seconds

    def _log(self, norm: float, run: _RunState) -> _Stop | None:
        """The logging step: the train/ and throughput/ metrics of the steps since the last one (``norm``: the
        latest step's gradient norm). Weights gone non-finite stop the run."""
        n = self.iteration
        if not self._params_finite():
            return StopReason.DIVERGED, f"weights became non-finite by iteration {n}; try a smaller lr"
        w = self._window
        metrics = {
            "train/loss": w["loss_sum"] / w["count"],
            "train/smooth_loss": self.smooth_loss,
            "grad/norm": norm,
            "optim/lr": self.optimizer.lr,
            "throughput/chars_per_s": w["chars"] / max(w["seconds"], 1e-9),
            **self._time_shares(time.perf_counter() - run.started),
        }
        self._window = _empty_window()
        self._emit("on_metrics", metrics, n)
        return None

    def _round(self, run: _RunState) -> _Stop | None:
        """The sample and the evaluation round due at this iteration, timed as time outside training steps. A
        validation loss that explodes stops the run."""
        cfg = self.train_config
        n = self.iteration
        round_start = time.perf_counter()
        round_due = self._evaluation_due(n, round_start - run.started, run.last_round_seconds, run.last_round_end)
        sample_due = round_due if cfg.sample_every is None else cfg.sample_every > 0 and n % cfg.sample_every == 0
        if sample_due:
            self._emit("on_sample", self.sample(), n)
        # evaluate and checkpoint last, so a checkpoint holds the state after everything iteration n did
        if round_due and self.val_ix is not None:
            self._evaluate_and_save(run)
            if (reason := self._val_diverged()) is not None:
                return StopReason.DIVERGED, reason
        if round_due or sample_due:
            round_end = time.perf_counter()
            self.eval_seconds += round_end - round_start
            if round_due:
                run.last_round_seconds = round_end - round_start
                run.last_round_end = round_end - run.started
        return None

    def _end(self, run: _RunState, stop: StopReason, reason: str) -> TrainResult:
        """The run's end: the final model measured (when the budget ended between evaluations) and saved (unless
        it diverged); the result."""
        end_start = time.perf_counter()
        finished = stop not in (StopReason.DIVERGED, StopReason.REQUESTED)
        if finished and self.val_ix is not None and self.evaluated_at != self.iteration:
            self._evaluate_and_save(run)
            if (diverged := self._val_diverged()) is not None:
                stop, reason = StopReason.DIVERGED, diverged
        if stop != StopReason.DIVERGED:
            run.last_ckpt = self._save("latest.npz") or run.last_ckpt
            if run.last_ckpt is not None:
                self._emit("on_checkpoint", run.last_ckpt, self.iteration, False)
        self.eval_seconds += time.perf_counter() - end_start
        self.elapsed_seconds = time.perf_counter() - run.started
        return TrainResult(
            stop,
            reason,
            self.iteration,
            self.smooth_loss,
            self.val_loss,
            self.best_val_loss,
            self.elapsed_seconds,
            self.train_seconds,
            run.last_ckpt,
            run.best_ckpt,
        )
