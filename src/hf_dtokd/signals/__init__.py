"""Distillation signals beyond logits: stage features through projectors, DeiT's distillation token, and
detection (``signals.detection``)."""
