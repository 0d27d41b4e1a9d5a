"""The one training loop and its parts: optimizer/schedule, checkpoints, logging, distributed."""
