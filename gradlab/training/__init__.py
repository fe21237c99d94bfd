"""Training: one model (cell + output layer), one loop, the optimisers and the clipping strategies."""

from .config import TrainConfig, with_task_params
from .loop import TrainResult, evaluate, train
from .model import SeqModel, build_model

__all__ = ["TrainConfig", "TrainResult", "SeqModel", "build_model", "evaluate", "train", "with_task_params"]
