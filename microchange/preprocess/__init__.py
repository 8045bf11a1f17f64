"""Preparation of both dates before features.

Co-registration, radiometric normalisation, speckle filter, log transform and denoising;
:mod:`~microchange.preprocess.chain` applies them in order and
:mod:`~microchange.preprocess.alignment` decides the co-registration of a pair.
"""
