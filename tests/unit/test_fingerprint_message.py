"""A resume refused for other settings: one line that names each differing key, long values cut in their middle."""

from __future__ import annotations

from attnwh.core.errors import FingerprintMismatch


def test_long_values_keep_their_ends_so_that_the_difference_shows():
    old = "/data/benchmarks/questions/questions_version_2024_with_many_more_parts_a.tsv"
    new = old.replace("_a.tsv", "_b.tsv")
    message = str(FingerprintMismatch("run1", {"data": (old, new)}))
    assert "_a.tsv'" in message and "_b.tsv'" in message and len(message) < 220, message
    conditions = [["top", "all", k, None, []] for k in range(40)]
    message = str(FingerprintMismatch("run1", {"conditions": (conditions, conditions[:3])}))
    assert "run: 40 items: [['top'" in message and "now: 3 items: [['top', 'all', 0" in message and len(message.splitlines()) == 1 and len(message) < 220, message
