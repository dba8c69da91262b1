"""Distillation signals and task losses, each a named scalar computed in float32."""

from hf_dtokd.losses.classification import (
    IGNORE_INDEX,
    is_soft,
    labelled_mask,
    logit_kd_loss,
    task_cross_entropy,
)
from hf_dtokd.losses.deit_token import DEIT_DISTILLATION, deit_token_losses, hard_distillation_loss
from hf_dtokd.losses.detection import (
    box_kd_loss,
    class_kd_loss,
    detection_scores,
    match_to_teacher,
    query_states,
    query_token_kd_loss,
)
from hf_dtokd.losses.segmentation import (
    SEGMENTATION_KD_TERMS,
    channel_kd_loss,
    pixel_kd_loss,
    resample_logits,
    segmentation_cross_entropy,
)

__all__ = [
    "SEGMENTATION_KD_TERMS",
    "channel_kd_loss",
    "pixel_kd_loss",
    "resample_logits",
    "segmentation_cross_entropy",
    "box_kd_loss",
    "class_kd_loss",
    "detection_scores",
    "match_to_teacher",
    "query_states",
    "query_token_kd_loss",
    "DEIT_DISTILLATION",
    "deit_token_losses",
    "hard_distillation_loss",
    "logit_kd_loss",
    "task_cross_entropy",
    "IGNORE_INDEX",
    "is_soft",
    "labelled_mask",
]
