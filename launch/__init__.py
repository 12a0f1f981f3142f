"""Launchers: start a run in child processes (Ray simulation or local deployment) and follow it."""
