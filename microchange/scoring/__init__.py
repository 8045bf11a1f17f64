"""From features to a change mask.

Scorers fitted on the global sample, thresholds, the mask and its connected regions.
"""
