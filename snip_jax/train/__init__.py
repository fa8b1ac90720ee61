"""Training: the original's optimizer, the sharded CLIP train step, checkpoints, the loop."""
