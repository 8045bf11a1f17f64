"""Prefect tasks: each a few lines around one microchange core call; they pass paths, not arrays."""
