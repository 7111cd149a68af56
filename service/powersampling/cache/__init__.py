"""Caching of completed chains and per-block checkpoints (Redis)."""
