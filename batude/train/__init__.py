"""Training, BC-ADL compression and fine-tuning loops (above ``rank``, below the CLI)."""

from batude.train.compress import CompressResult, compress
from batude.train.config import CompressConfig, CompressMethod, TrainConfig
from batude.train.fit import TrainResult, train_model
from batude.train.loop import evaluate, kd_loss, train_one_epoch

__all__ = [
    "CompressConfig", "CompressMethod", "CompressResult", "TrainConfig", "TrainResult", "compress", "evaluate",
    "kd_loss", "train_model", "train_one_epoch",
]
