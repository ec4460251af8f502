"""Trace loaders and replay simulators. They drive the same core Scheduler as production."""
