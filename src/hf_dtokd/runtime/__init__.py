"""Where a run executes: distributed backends (DDP, FSDP, DeepSpeed) and precision (bf16, fp8)."""
