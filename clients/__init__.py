"""The Flower ClientApp that runs on every device."""
