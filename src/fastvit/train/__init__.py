"""Training engine: config and recipes, ``train`` / ``train_one_epoch`` / ``evaluate``.

Names are imported on first use (see :mod:`fastvit._lazy`): the CLI builds its ``train``
options from :mod:`fastvit.train.config` without importing torch.
"""

from fastvit._lazy import lazy_attributes

_EXPORTS = {
    **dict.fromkeys(
        ("RECIPES", "TrainConfig", "recipe_config", "validate_config"), "fastvit.train.config"
    ),
    **dict.fromkeys(
        (
            "TrainingDiverged",
            "TrainingInterrupted",
            "TrainingStopped",
            "TrainingTerminated",
            "TrainResult",
            "evaluate",
            "format_summary",
            "train",
            "train_one_epoch",
        ),
        "fastvit.train.engine",
    ),
    "FinalReport": "fastvit.train.final",
    "RunState": "fastvit.train.state",
}

__all__ = [
    "RECIPES",
    "FinalReport",
    "RunState",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingStopped",
    "TrainingTerminated",
    "evaluate",
    "format_summary",
    "recipe_config",
    "train",
    "train_one_epoch",
    "validate_config",
]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
