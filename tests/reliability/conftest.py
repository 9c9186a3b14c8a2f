"""A small complete warehouse: a toy extraction with raw rows, and a mask sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnwh.face.cli import main
from tests.reliability.harness import EXTRACT, MASK


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    """A toy warehouse with a two-part extraction (raw rows included) and a mask sweep of three conditions."""
    root = tmp_path_factory.mktemp("pristine") / "wh"
    for args in (EXTRACT, MASK):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--warehouse", str(root)])
        assert exit_.value.code == 0
    return root
