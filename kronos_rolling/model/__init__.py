"""Kronos tokenizer and predictor, event conditioning, LoRA and fast forecasting."""
