"""Aggregation strategies: each a ``flwr.serverapp.strategy.Strategy``, selected by name."""
