"""Detection distillation for DETR-family detectors: the trainer, its inputs, COCO metrics, model building."""
