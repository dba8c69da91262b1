"""hf_dtokd: knowledge distillation for vision models in transformers.Trainer, balanced by DTO-KD."""

from hf_dtokd.balancing import (
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
from hf_dtokd.signals.deit_token import DeiTTokenTrainer
from hf_dtokd.signals.detection.inputs import DetectionTransform, collate_detection
from hf_dtokd.signals.detection.metrics import DetectionMetrics
from hf_dtokd.signals.detection.models import build_detector, load_object_detector
from hf_dtokd.signals.detection.trainer import DetectionKDTrainer
from hf_dtokd.signals.feature_kd import FeatureKDTrainer, StudentWithProjectors
from hf_dtokd.signals.signal_config import DeiTTokenConfig, DetectionKDConfig, FeatureKDConfig
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.dtokd_trainer import DTOKDTrainer
from hf_dtokd.trainer.metrics import classification_metrics
from hf_dtokd.trainer.nonfinite import NonFiniteLossError

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
    "DeiTTokenConfig",
    "DeiTTokenTrainer",
    "DetectionKDConfig",
    "DetectionKDTrainer",
    "DetectionMetrics",
    "DetectionTransform",
    "build_detector",
    "collate_detection",
    "load_object_detector",
    "FeatureKDConfig",
    "FeatureKDTrainer",
    "StudentWithProjectors",
    "FixedWeights",
    "NonFiniteLossError",
    "build_balancer",
    "classification_metrics",
    "dto_closed_form",
]
