"""The edge tier: what an edge does with its devices, simulated or on its own machine."""
