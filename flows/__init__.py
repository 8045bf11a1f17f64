"""Prefect flows composing the tasks of ``microchange.tasks`` (installed as ``microchange.flows``).

Deployments reference them by file path (``flows/detect.py:detect_changes``).
"""
