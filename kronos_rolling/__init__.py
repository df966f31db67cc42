"""kronos-rolling: keep a Kronos market-candle model current with monthly LoRA fine-tunes tracked in MLflow."""

__version__ = "0.1.0"

ASSET_CLASSES = ("crypto", "forex_commodity", "equity")
# Training forward precisions, named here (no torch import) for the CLI and the MLproject checks.
TRAINING_PRECISIONS = ("float32", "bf16")
