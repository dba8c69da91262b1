"""The trainer: ``DTOKDConfig`` beside ``DTOKDTrainer``, and what a step needs besides the maths (the
accumulation window's exact means, the teacher's inputs and cache, checkpoints, evaluation metrics)."""

from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.dtokd_trainer import DTOKDTrainer, load_teacher

__all__ = ["DTOKDConfig", "DTOKDTrainer", "load_teacher"]
