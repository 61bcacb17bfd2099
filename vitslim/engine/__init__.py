"""The slimming engine: schedules of prune + distil stages, the training loop, checkpoints."""
