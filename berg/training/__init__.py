"""Creation pipeline: train, evaluate and export berg models (see docs/training.md)."""
