"""Datasets, partitioning, the synthetic IoT generator and the simulation launchers."""
