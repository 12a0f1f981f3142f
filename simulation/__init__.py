"""What runs the apps: the Ray simulation engine and the sequential in-process runner."""
