"""Device ids and topic prefixes: what the contract accepts and refuses."""

from __future__ import annotations

import pytest

from harstream.stream.contract import check_prefix, is_valid_id


def test_ids_and_prefixes():
    assert is_valid_id("watch-7.left_arm") and is_valid_id("a" * 64) and is_valid_id("7")
    for bad in ("", "a" * 65, "a b", "a/b", "é", "a+", ".", "..", "-", "_x", "service"):
        assert not is_valid_id(bad)
    assert check_prefix("site1/har") == "site1/har"
    for bad in ("", "/har", "har/", "h#r"):
        with pytest.raises(ValueError):
            check_prefix(bad)
