"""The cloud ServerApp and what it records about a run."""
