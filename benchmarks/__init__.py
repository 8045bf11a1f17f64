"""Benchmarks of microchange on the shared real-data change-detection pairs."""
