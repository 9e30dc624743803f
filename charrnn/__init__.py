"""charrnn: character-level RNN language models in pure NumPy.

>>> from charrnn import Vocab, ModelConfig, TrainConfig, OptimConfig, Trainer, load_corpus, split_corpus
>>> corpus = load_corpus("pystdlib")
>>> vocab = Vocab.from_text(corpus.text)
>>> train_text, val_text = split_corpus(corpus, 0.1, seq_length=25)
>>> trainer = Trainer(ModelConfig("lstm", vocab.size, hidden_size=128), TrainConfig(max_iters=500),
...                   OptimConfig("adam", lr=2e-3), vocab, train_text, val_text, checkpoint_dir="ckpt")
>>> result = trainer.run()
"""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .corpora import Corpus, load_corpus, load_text
from .data import BatchStream, Vocab, split_corpus, split_train_val
from .errors import CharRNNError, CheckpointError, ConfigError, DataError
from .gradcheck import check_gradients
from .model import ModelConfig
from .sample import sample
from .schedule import ScheduleConfig
from .train import (
    Callback,
    OptimConfig,
    PrintCallback,
    StreamLosses,
    TrainConfig,
    Trainer,
    TrainResult,
    evaluate_streams,
)

__all__ = [
    "BatchStream",
    "Callback",
    "CharRNNError",
    "CheckpointError",
    "ConfigError",
    "Corpus",
    "DataError",
    "ModelConfig",
    "OptimConfig",
    "PrintCallback",
    "ScheduleConfig",
    "StreamLosses",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "Vocab",
    "check_gradients",
    "evaluate_streams",
    "load_checkpoint",
    "load_corpus",
    "load_model",
    "load_text",
    "sample",
    "save_checkpoint",
    "split_corpus",
    "split_train_val",
]
