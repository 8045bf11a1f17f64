"""Prefect tasks, each a few lines around one core call (installed as ``microchange.tasks``).

They pass paths, not arrays.
"""
