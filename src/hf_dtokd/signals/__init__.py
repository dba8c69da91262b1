"""Building blocks of distillation signals beyond logits: stage features, projectors, the trainable module that
holds the student and its projectors, and each signal trainer's config."""
