"""What a published student carries: the model card's distillation section and the trade-off plot."""
