"""Losses: pure functions of named tensors returning (per-example losses, detached metrics)."""
