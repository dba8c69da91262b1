"""The distillation tasks, each a ``DistillationTask`` (``trainer/task.py``) and the trainer that runs it on the
balancing engine: classification (``DTOKDTrainer``, with feature KD and DeiT's distillation token), detection
(``DetectionKDTrainer``) and segmentation (``SegmentationKDTrainer``)."""
