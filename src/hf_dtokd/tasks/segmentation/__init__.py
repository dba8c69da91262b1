"""Semantic segmentation: the task (pixel-wise KD, channel-wise KD and the student's cross-entropy), its trainer
``SegmentationKDTrainer``, the mask transform, mIoU metrics and model loading."""
