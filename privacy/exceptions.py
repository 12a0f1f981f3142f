"""Errors of the privacy package: each says what was expected, what came, and what happens next."""

from __future__ import annotations


class ReleaseRefused(ValueError):
    """A release would break k-anonymity or l-diversity; nothing is released."""


class BudgetExhausted(ValueError):
    """Spending ε would exceed a budget under sequential composition; nothing is spent."""
