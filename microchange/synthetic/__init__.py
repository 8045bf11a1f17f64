"""Bitemporal synthetic scenes with known small changes, for the demo and the tests.

A scene is a pair of co-registered multispectral rasters, BEFORE and AFTER, of an invented
agricultural landscape (:mod:`~microchange.synthetic.landscape`), plus the exact mask of what
changed on the ground between the dates (:mod:`~microchange.synthetic.changes`).

AFTER is BEFORE seen through another acquisition, which is *not* change: a per-band gain (0.85
to 1.15) and offset (+-0.02), a sub-pixel global misregistration (``shift_px``) and independent
Gaussian noise on each date. The changes are implanted after the shift and before the gain,
offset and noise, so the truth is exactly the set of modified ground pixels. Every draw comes
from ``numpy.random.default_rng(seed)`` (independent streams for the landscape, the nuisance,
the changes and the noise): the same arguments give the same arrays, and changing ``n_changes``
keeps the same landscape.
"""

from microchange.synthetic.scene import SyntheticScene, make_scene, write_scene

__all__ = ("SyntheticScene", "make_scene", "write_scene")
