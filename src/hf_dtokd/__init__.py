"""hf_dtokd: knowledge distillation for vision models in transformers.Trainer, balanced by DTO-KD."""

from .balancing import FAMO, Balancer, DTOExact, FixedWeights, build_balancer, dto_closed_form
from .config import DTOKDConfig
from .metrics import classification_metrics
from .trainer import DTOKDTrainer

__version__ = "0.1.0"

__all__ = [
    "FAMO",
    "Balancer",
    "DTOExact",
    "DTOKDConfig",
    "DTOKDTrainer",
    "FixedWeights",
    "build_balancer",
    "classification_metrics",
    "dto_closed_form",
]
