"""Predictor service: per-symbol adapter selection by alias, one base in memory."""
