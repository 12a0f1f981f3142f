"""Privacy: accounting, DP-SGD wiring, local DP, anonymization and the attacks that measure leakage.

The package is the home of fedmosaic's privacy components; the models in ``fedmosaic.models``
are built from Opacus-compatible layers so that DP-SGD can wrap them unchanged.
"""
