"""The per-id table: idle and least recently seen ids are evicted."""

from __future__ import annotations

from harstream.stream.devices import BufferTable


def test_table_evicts_idle_and_least_recent_ids():
    evicted = []
    table = BufferTable(
        lambda d: object(),  # any buffer: the table only keeps and evicts it
        max_ids=2,
        ttl_s=10,
        on_evict=lambda d, r: evicted.append((d, r)),
    )
    a = table.get("a", 0.0)
    table.get("b", 1.0)
    assert table.get("a", 2.0) is a
    table.get("c", 3.0)  # full: "b" was seen least recently
    assert evicted == [("b", "capacity")] and "a" in table and "c" in table
    assert table.evict_idle(12.5) == 1 and evicted[-1] == ("a", "idle")
    assert len(table) == 1
