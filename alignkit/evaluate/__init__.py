"""Evaluation: metrics that say whether alignment worked."""
