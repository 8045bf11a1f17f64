"""From features to a change mask: scorers fitted on the global sample, thresholds, the mask
and its connected regions."""
