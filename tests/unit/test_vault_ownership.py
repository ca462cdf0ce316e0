"""`foreign()`: which stored tokens tokend could have written (and so may defer to), as a table.
`token_exp` is the stored access token's JWT `exp` (None: not a JWT)."""

from __future__ import annotations

import pytest

from tokend.vault.kv import Current, foreign

OURS = 1_800_000_000  # expires_on of the token tokend publishes
HOUR = 3600


@pytest.mark.parametrize(
    ("stored", "lifetime", "why"),
    [
        (Current(3, OURS + HOUR, None, True), HOUR, None),  # another tokend's later token
        (Current(3, OURS + 23 * HOUR, None, True), HOUR, None),  # within 24 h
        (Current(3, OURS + 25 * HOUR, None, True), HOUR, "more than 24 h after"),
        (Current(3, OURS + 40 * HOUR, None, True), 24 * HOUR, None),  # two lifetimes of 24 h
        (Current(3, OURS * 1000, None, True), HOUR, "more than 24 h after"),  # milliseconds
        (Current(3, OURS + HOUR, OURS + HOUR - 2, True), HOUR, None),  # exp ~ expires_on
        (Current(3, OURS + HOUR, OURS + HOUR + 299, True), HOUR, None),
        (Current(3, OURS + HOUR, OURS, True), HOUR, "does not match the exp"),
        (Current(3, OURS + HOUR, None, False), HOUR, "metadata does not say managed-by"),
        (Current(0, OURS + HOUR, None, None), HOUR, None),  # KV v1: no metadata to go by
        (Current(0, None, None, None), HOUR, None),  # nothing there
    ],
)
def test_foreign(stored: Current, lifetime: int, why: str | None) -> None:
    found = foreign(stored, OURS, lifetime)
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found
