"""hf_dtokd: knowledge distillation for vision models in transformers.Trainer, balanced by DTO-KD."""

from .balancing import (
    DOT,
    FAMO,
    IMTLG,
    METHODS,
    MGDA,
    AlignedMTL,
    Balancer,
    CAGrad,
    DTOExact,
    DualProj,
    FixedWeights,
    PCGrad,
    UncertaintyWeighting,
    UPGrad,
    build_balancer,
    dto_closed_form,
)
from .config import DTOKDConfig
from .deit_token import DeiTTokenTrainer
from .detection_inputs import DetectionTransform, collate_detection
from .detection_kd import DetectionKDTrainer
from .detection_metrics import DetectionMetrics
from .detection_models import build_detector, load_object_detector
from .feature_kd import FeatureKDTrainer, StudentWithProjectors
from .metrics import classification_metrics
from .trainer import DTOKDTrainer

__version__ = "0.1.0"

__all__ = [
    "DOT",
    "FAMO",
    "IMTLG",
    "MGDA",
    "METHODS",
    "AlignedMTL",
    "Balancer",
    "CAGrad",
    "DTOExact",
    "DualProj",
    "PCGrad",
    "UPGrad",
    "UncertaintyWeighting",
    "DTOKDConfig",
    "DTOKDTrainer",
    "DeiTTokenTrainer",
    "DetectionKDTrainer",
    "DetectionMetrics",
    "DetectionTransform",
    "build_detector",
    "collate_detection",
    "load_object_detector",
    "FeatureKDTrainer",
    "StudentWithProjectors",
    "FixedWeights",
    "build_balancer",
    "classification_metrics",
    "dto_closed_form",
]
