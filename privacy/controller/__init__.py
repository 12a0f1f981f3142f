"""The adaptive privacy controller: policies, environment, audit log."""
