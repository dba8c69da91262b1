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
from hf_dtokd.signals.signal_config import (
    DeiTTokenConfig,
    DetectionKDConfig,
    FeatureKDConfig,
    SegmentationKDConfig,
)
from hf_dtokd.tasks.classification.deit_token import DeiTTokenTrainer
from hf_dtokd.tasks.classification.feature_kd import FeatureKDTrainer, StudentWithProjectors
from hf_dtokd.tasks.classification.metrics import classification_metrics
from hf_dtokd.tasks.classification.task import ClassificationTask
from hf_dtokd.tasks.classification.trainer import DTOKDTrainer
from hf_dtokd.tasks.detection.inputs import DetectionTransform, collate_detection
from hf_dtokd.tasks.detection.metrics import DetectionMetrics
from hf_dtokd.tasks.detection.models import build_detector, load_object_detector
from hf_dtokd.tasks.detection.task import DetectionTask
from hf_dtokd.tasks.detection.trainer import DetectionKDTrainer
from hf_dtokd.tasks.detection.unlabelled import UnlabelledImageTransform
from hf_dtokd.tasks.segmentation.inputs import SegmentationTransform
from hf_dtokd.tasks.segmentation.metrics import SegmentationMetrics
from hf_dtokd.tasks.segmentation.models import load_semantic_segmenter
from hf_dtokd.tasks.segmentation.task import SegmentationTask
from hf_dtokd.tasks.segmentation.trainer import SegmentationKDTrainer
from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.engine import DistillationTrainer
from hf_dtokd.trainer.nonfinite import NonFiniteLossError
from hf_dtokd.trainer.task import DistillationTask
from hf_dtokd.trainer.teacher import DistillationTeacher

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
    "ClassificationTask",
    "DTOKDConfig",
    "DTOKDTrainer",
    "DetectionTask",
    "DistillationTask",
    "DistillationTeacher",
    "DistillationTrainer",
    "DeiTTokenConfig",
    "DeiTTokenTrainer",
    "DetectionKDConfig",
    "DetectionKDTrainer",
    "DetectionMetrics",
    "DetectionTransform",
    "UnlabelledImageTransform",
    "build_detector",
    "collate_detection",
    "load_object_detector",
    "SegmentationKDConfig",
    "SegmentationKDTrainer",
    "SegmentationMetrics",
    "SegmentationTask",
    "SegmentationTransform",
    "load_semantic_segmenter",
    "FeatureKDConfig",
    "FeatureKDTrainer",
    "StudentWithProjectors",
    "FixedWeights",
    "NonFiniteLossError",
    "build_balancer",
    "classification_metrics",
    "dto_closed_form",
]
