"""fedmosaic: privacy-preserving federated multimodal learning for IoT, on Flower."""

from pathlib import Path

__version__ = "0.1.0"

PROJECT_DIR = Path(__file__).resolve().parent
"""Directory that holds the Flower app's ``pyproject.toml`` (the repo root when editable)."""
