"""Attacks that measure leakage: membership inference, gradient inversion, re-identification.

Each works on any run: :mod:`fedmosaic.privacy.attacks.run` loads a run folder's checkpoint and
dataset, and ``python -m fedmosaic.privacy.attacks RUN_DIR`` prints what the attacks achieve.
"""
