"""The embedded toy's training from scratch, with its default settings: it answers and describes.

A file of its own: the suite's longest test (~6 minutes with two threads, ~18 with one beside another worker),
so that ``--dist loadfile`` gives the rest of the toy's tests to the other worker."""

from __future__ import annotations

import pytest

from attnwh.extract.toy.train import train_toy


@pytest.mark.slow
def test_toy_training_reaches_the_accuracy_threshold(tmp_path):
    """``attnwh toy train`` from scratch, with its default settings (about 5 minutes on 2 cores): it answers and describes."""
    metrics = train_toy(tmp_path / "toy")
    assert metrics["accuracy_yes_no"] >= 0.9
    assert metrics["accuracy_colour"] >= 0.6
    assert metrics["caption_exact"] >= 0.9 and metrics["caption_eos_rate"] >= 0.95  # the reference caption, then </s>
    assert metrics["caption_chair"] <= 5 and metrics["caption_cover"] >= 95  # AMBER's metrics, in percent
    assert (tmp_path / "toy" / "config.json").is_file()
