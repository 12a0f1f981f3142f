"""The edge tier: which edge each device belongs to, and what an edge does with its devices."""
