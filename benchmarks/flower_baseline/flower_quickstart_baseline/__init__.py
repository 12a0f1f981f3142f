"""flower_quickstart_baseline: a bare Flower quickstart app on fedmosaic's model and data."""
