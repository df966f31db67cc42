"""Evaluation: the same held-out origins for every model, pure scores, paired comparisons."""
