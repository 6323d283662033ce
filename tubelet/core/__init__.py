"""Plumbing every room may use and that knows nothing of models: atomic file writes (`files`)."""
