import hashlib
import hmac

import pandas as pd
import pytest

from fedmosaic.privacy.anonymization import (
    check_release,
    k_anonymity,
    l_diversity,
    pseudonym,
    pseudonymize,
)
from fedmosaic.privacy.exceptions import ReleaseRefused

KEY_A = b"a" * 32
KEY_B = b"b" * 32
DEVICES = [f"watch-{i:03d}" for i in range(200)]


def test_pseudonym_is_the_rfc_2104_hmac_sha256_of_the_identifier():
    expected = hmac.new(KEY_A, b"watch-007", hashlib.sha256).hexdigest()

    assert pseudonym("watch-007", KEY_A) == expected
    assert len(expected) == 64


def test_pseudonyms_are_stable_under_one_key():
    first = [pseudonym(d, KEY_A) for d in DEVICES]
    second = [pseudonym(d, bytearray(KEY_A)) for d in DEVICES]

    assert first == second
    assert len(set(first)) == len(DEVICES)


def test_pseudonyms_are_unlinkable_across_keys():
    under_a = [pseudonym(d, KEY_A) for d in DEVICES]
    under_b = [pseudonym(d, KEY_B) for d in DEVICES]

    # no pseudonym recurs, and the best an attacker can do by matching hex digits position-wise
    # is chance level (1/16 per character) — pseudonyms under different keys share no structure
    assert not set(under_a) & set(under_b)
    agreement = sum(a[i] == b[i] for a, b in zip(under_a, under_b, strict=True) for i in range(64))
    assert agreement / (len(DEVICES) * 64) == pytest.approx(1 / 16, abs=0.01)
    # linking by rank (sorted order) recovers no more than chance
    rank_a = {d: r for r, d in enumerate(sorted(DEVICES, key=lambda d: pseudonym(d, KEY_A)))}
    rank_b = {d: r for r, d in enumerate(sorted(DEVICES, key=lambda d: pseudonym(d, KEY_B)))}
    assert sum(rank_a[d] == rank_b[d] for d in DEVICES) <= 5


def test_pseudonymize_replaces_only_the_identifier_column():
    table = pd.DataFrame({"device": ["x1", "x2", "x1"], "steps": [10, 20, 30]})

    released = pseudonymize(table, "device", KEY_A)

    assert list(released["steps"]) == [10, 20, 30]
    assert released["device"][0] == released["device"][2] != released["device"][1]
    assert list(table["device"]) == ["x1", "x2", "x1"]


@pytest.mark.parametrize("key", [b"short", "a" * 32, None])
def test_pseudonym_rejects_weak_or_non_bytes_keys(key):
    with pytest.raises(ValueError, match="key must be bytes of length >= 16"):
        pseudonym("watch-1", key)


TABLE = pd.DataFrame({
    "age": ["20-29", "20-29", "20-29", "30-39", "30-39", "30-39"],
    "zip": ["123**", "123**", "123**", "456**", "456**", "456**"],
    "activity": ["walk", "run", "walk", "rest", "rest", "rest"],
})


def test_k_and_l_of_a_hand_built_table():
    # two classes of 3 rows; distinct activities: {walk, run} and {rest}
    assert k_anonymity(TABLE, ["age", "zip"]) == 3
    assert l_diversity(TABLE, ["age", "zip"], "activity") == 1


def test_release_meeting_k_and_l_passes():
    check_release(TABLE.iloc[:3], ["age", "zip"], k=3, sensitive="activity", l_distinct=2)


def test_release_breaking_k_names_the_small_class():
    table = pd.concat([TABLE, pd.DataFrame({"age": ["40-49"], "zip": ["789**"],
                                            "activity": ["walk"]})])

    with pytest.raises(ReleaseRefused, match=r"\{'age': '40-49', 'zip': '789\*\*'\} has 1 row"):
        check_release(table, ["age", "zip"], k=2)


def test_release_breaking_l_names_the_uniform_class():
    with pytest.raises(ReleaseRefused, match=r"'30-39'.*1 distinct 'activity'.*>= 2"):
        check_release(TABLE, ["age", "zip"], k=3, sensitive="activity", l_distinct=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"quasi_identifiers": [], "k": 2}, "quasi_identifiers"),
    ({"quasi_identifiers": ["age"], "k": 0}, "k must be >= 1"),
    ({"quasi_identifiers": ["age"], "k": 2, "sensitive": "activity", "l_distinct": 0},
     "l_distinct"),
    ({"quasi_identifiers": ["height"], "k": 2}, r"lacks column\(s\) \['height'\]"),
    ({"quasi_identifiers": ["age"], "k": 2, "sensitive": "income"}, "income"),
])
def test_check_release_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_release(TABLE, **kwargs)
