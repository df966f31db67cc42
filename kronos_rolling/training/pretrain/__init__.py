"""Pre-training a small Kronos base on history before a cut-off (config, data, stages, measure, run)."""
