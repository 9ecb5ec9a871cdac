"""Training and inference engines.

:mod:`medssl.engine.loop` holds the one iteration-based training loop that semi-supervised training,
masked pretraining and fine-tuning share; its main names are re-exported here.
"""

from medssl.engine.loop import (
    LoopResult,
    LoopSpec,
    PeriodicTask,
    Stateful,
    TrainingDivergedError,
    train_iterations,
)

__all__ = ["LoopResult", "LoopSpec", "PeriodicTask", "Stateful", "TrainingDivergedError", "train_iterations"]
