"""Image classification: the task (logit KD + cross-entropy), its trainer ``DTOKDTrainer``, feature KD through
projectors (``FeatureKDTrainer``), DeiT's distillation token (``DeiTTokenTrainer``) and top-k accuracy."""
