"""Market data: the store, validation, asset classes, windows, events and training samples."""
