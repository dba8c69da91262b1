"""Where the per-loss gradients are taken: at the student's parameters (``parameters``) or at the output of
a layer every loss shares (``representation``)."""

from hf_dtokd.gradients.parameters import WindowGradients, objective_reach

__all__ = ["WindowGradients", "objective_reach"]
