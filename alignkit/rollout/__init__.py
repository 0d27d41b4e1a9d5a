"""Rollouts: batched sampling from a policy with a KV cache."""

from alignkit.rollout.sampling import Rollout, SamplingSettings, filter_logits, sample

__all__ = ["Rollout", "SamplingSettings", "filter_logits", "sample"]
