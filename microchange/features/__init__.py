"""Feature extractors: a block of both dates in, per-pixel feature stacks out.

``bands`` (standardised band values), ``backbone`` (a torchvision CNN) and ``learned`` (a compact
CNN trained on the pair itself); :mod:`~microchange.features.base` is the interface they share.
"""
