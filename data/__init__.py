"""Run data: the multimodal data types, the dataset registry, smartwatch and synthetic data."""
