r"""Classical anonymization of released records: keyed pseudonyms, k-anonymity, l-diversity.

* **Keyed pseudonymization**: a device identifier :math:`d` becomes
  :math:`\mathrm{HMAC\text{-}SHA256}_K(d)` (RFC 2104, via Python's :mod:`hmac`). Under one
  secret key :math:`K` the pseudonym is stable, so records of one device stay linkable for
  analysis; without :math:`K` it cannot be recomputed from a guessed identifier (unlike a
  plain hash), and pseudonyms under different keys are unlinkable.
* **k-anonymity** (Sweeney 2002, "k-anonymity: a model for protecting privacy", IJUFKS 10(5)):
  every combination of quasi-identifier values (an *equivalence class*) is shared by at least
  :math:`k` rows.
* **l-diversity**, distinct variant (Machanavajjhala et al. 2007, "l-diversity: Privacy beyond
  k-anonymity", ACM TKDD 1(1)): every equivalence class holds at least :math:`l` distinct
  values of the sensitive attribute.

The checks raise :class:`~fedmosaic.privacy.exceptions.ReleaseRefused` naming the offending
equivalence class, so a release that would break k or l never goes out.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import pandas as pd

from fedmosaic.privacy.exceptions import ReleaseRefused

MIN_KEY_BYTES = 16
"""Shortest accepted HMAC key (128 bits)."""


def pseudonym(identifier: str, key: bytes) -> str:
    """The keyed pseudonym of ``identifier``: hex HMAC-SHA256 under ``key``.

    Args:
        identifier: A device identifier (any string).
        key: The secret key, at least :data:`MIN_KEY_BYTES` bytes
            (e.g. ``secrets.token_bytes(32)``).

    Returns:
        64 hex characters.

    Raises:
        ValueError: If ``key`` is not bytes of at least :data:`MIN_KEY_BYTES` bytes.

    """
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        length = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"key must be bytes of length >= {MIN_KEY_BYTES}, got {length}")
    return hmac.new(bytes(key), str(identifier).encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymize(table: pd.DataFrame, column: str, key: bytes) -> pd.DataFrame:
    """A copy of ``table`` with ``column`` replaced by its keyed pseudonyms.

    Raises:
        ValueError: If ``column`` is not in ``table`` or ``key`` is too short.

    """
    _check_columns(table, [column])
    released = table.copy()
    released[column] = [pseudonym(str(value), key) for value in table[column]]
    return released


def k_anonymity(table: pd.DataFrame, quasi_identifiers: Sequence[str]) -> int:
    """The largest :math:`k` the table satisfies: its smallest equivalence class's size.

    Returns 0 for an empty table.
    """
    _check_columns(table, quasi_identifiers)
    if table.empty:
        return 0
    return int(table.groupby(list(quasi_identifiers), dropna=False).size().min())


def l_diversity(table: pd.DataFrame, quasi_identifiers: Sequence[str], sensitive: str) -> int:
    """The largest distinct :math:`l`: fewest distinct sensitive values in any class.

    Returns 0 for an empty table.
    """
    _check_columns(table, [*quasi_identifiers, sensitive])
    if table.empty:
        return 0
    return int(table.groupby(list(quasi_identifiers), dropna=False)[sensitive].nunique().min())


def check_release(
    table: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    k: int,
    sensitive: str | None = None,
    l_distinct: int = 1,
) -> None:
    """Refuse a release that breaks k-anonymity or (with ``sensitive``) distinct l-diversity.

    Args:
        table: The table about to be released.
        quasi_identifiers: Columns an attacker may know from elsewhere (non-empty).
        k: Required class size, ``>= 1``.
        sensitive: The sensitive column; ``None`` skips the l-diversity check.
        l_distinct: Required distinct sensitive values per class, ``>= 1``.

    Raises:
        ValueError: If an argument is out of range or a column is missing.
        ReleaseRefused: Naming the first offending equivalence class, its size or its
            distinct sensitive values, and the requirement.

    """
    if not quasi_identifiers:
        raise ValueError("quasi_identifiers must name at least one column, got none")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if l_distinct < 1:
        raise ValueError(f"l_distinct must be >= 1, got {l_distinct}")
    _check_columns(table, [*quasi_identifiers, *([sensitive] if sensitive else [])])
    groups = table.groupby(list(quasi_identifiers), dropna=False)
    sizes = groups.size()
    small = sizes[sizes < k]
    if len(small):
        raise ReleaseRefused(
            f"release refused: equivalence class {_describe(quasi_identifiers, small.index[0])} "
            f"has {int(small.iloc[0])} row(s), k-anonymity needs >= {k} "
            f"({len(small)} class(es) too small); generalise or suppress these rows"
        )
    if sensitive is None:
        return
    distinct = groups[sensitive].nunique()
    poor = distinct[distinct < l_distinct]
    if len(poor):
        raise ReleaseRefused(
            f"release refused: equivalence class {_describe(quasi_identifiers, poor.index[0])} "
            f"has {int(poor.iloc[0])} distinct {sensitive!r} value(s), l-diversity needs "
            f">= {l_distinct} ({len(poor)} class(es) too uniform); generalise these rows"
        )


def suppress_small_classes(table: pd.DataFrame, quasi_identifiers: Sequence[str], k: int,
                           sensitive: str | None = None, l_distinct: int = 1) -> pd.DataFrame:
    """The rows of ``table`` in classes that pass :func:`check_release`; the rest suppressed.

    A class is kept with ``>= k`` rows and, with ``sensitive``, ``>= l_distinct`` distinct
    sensitive values. Suppression is the simplest way to make a table pass.

    Raises:
        ValueError: If ``k`` or ``l_distinct`` is below 1 or a column is missing.
    """
    if k < 1 or l_distinct < 1:
        raise ValueError(f"k and l_distinct must be >= 1, got {k} and {l_distinct}")
    _check_columns(table, [*quasi_identifiers, *([sensitive] if sensitive else [])])
    if table.empty:
        return table.copy()
    groups = table.groupby(list(quasi_identifiers), dropna=False)
    keep = groups[quasi_identifiers[0]].transform("size") >= k
    if sensitive is not None:
        keep &= groups[sensitive].transform("nunique") >= l_distinct
    return table[keep].copy()


def _describe(quasi_identifiers: Sequence[str], index_value: object) -> dict[str, object]:
    values = index_value if isinstance(index_value, tuple) else (index_value,)
    return dict(zip(quasi_identifiers, values, strict=True))


def _check_columns(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; it has {list(table.columns)}")
