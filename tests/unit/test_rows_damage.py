"""Raw rows damaged in place (the file's size kept): every chunk carries a crc32c after its zstd, so any inverted byte
fails the read, where zstd alone decoded most such damage into other numbers. On hand-made rows, read back with Zarr
itself (the codecs written, not attnwh's readers, are under test)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from attnwh.warehouse.arrays import write_rows
from attnwh.warehouse.layout import rows_folder


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(0)
    attention = rng.random((6, 2, 3, 4, 40)).astype(np.float16)  # [sample, query, layer, head, key]
    attention[:, :, :, :, 30:] = np.nan  # rows shorter than the longest, as extraction pads them
    write_rows(folder, attention, np.arange(6), ["prompt", "gen1"])
    (shard,) = [path for path in (rows_folder(folder) / "attention" / "c").rglob("*") if path.is_file()]
    return folder, attention, shard, shard.read_bytes()


def test_rows_read_back_exactly(written):
    folder, attention, _, _ = written
    assert np.array_equal(zarr.open_group(rows_folder(folder), mode="r")["attention"][...], attention, equal_nan=True)


def test_every_byte_inverted_in_place_fails_the_read(written):
    """Before (zstd alone, no checksum): three in four such bytes read back as other numbers, without an error."""
    folder, attention, shard, original = written
    silent = []
    try:
        for at in range(0, len(original), max(1, len(original) // 200)):
            damaged = bytearray(original)
            damaged[at] ^= 0xFF
            shard.write_bytes(bytes(damaged))
            try:
                read = zarr.open_group(rows_folder(folder), mode="r")["attention"][...]
            except Exception:  # noqa: BLE001  a checksum's or a codec's error: the damage is seen
                continue
            silent.append((at, np.array_equal(read, attention, equal_nan=True)))
    finally:
        shard.write_bytes(original)
    assert silent == [], f"inverted bytes read without an error at offsets {silent[:5]}"
