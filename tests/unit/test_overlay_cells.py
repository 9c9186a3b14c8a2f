"""Overlays of images with a side of one pixel (``attnwh show`` on a 1×1 image): every processed pixel has the same
coordinate there, so the layout's boxes have no width along that side. Before, a cell of no width divided by zero
(numpy's RuntimeWarnings on the terminal) and the map was empty (all NaN: "image nan%" panels)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from attnwh.reports.overlays import overlay_maps

# the boxes extract.regions.token_layout gives a fixed-resolution family's 4 tokens of a 1×1 image (every edge on the
# pixel's centre), and of a 1×8 image (no width; two rows of 4 pixels each)
ONE_PIXEL = np.full((4, 4), 0.502)
ONE_COLUMN = np.array([[0.502, 0.0, 0.502, 4.0], [0.502, 0.0, 0.502, 4.0], [0.502, 4.0, 0.502, 8.0], [0.502, 4.0, 0.502, 8.0]])


def _quietly(*args) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning of numpy fails the test
        return overlay_maps(*args)


def test_a_one_pixel_image_is_the_mean_of_its_tokens():
    """Every token reads the one pixel with the same weight: the map there is their mean attention (in units of a
    token of the finest view, which is every token here), by hand."""
    weights = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 1.0]])  # [map, token]
    maps = _quietly(weights, ONE_PIXEL, np.zeros(4, np.int8), (1, 1), (1, 1))
    assert maps.shape == (2, 1, 1)
    assert maps[:, 0, 0] == pytest.approx([0.25, 0.25])


def test_a_one_pixel_wide_image_keeps_its_rows_apart():
    """Along the side of 8 pixels the tokens still read their own rows: the top pixel is the first two tokens' mean,
    the bottom pixel the last two's (by hand: their cells' tents, 4 pixels wide, centred at y 2 and 6, reach no
    further than 4 pixels), the pixels between blend them."""
    weights = np.array([0.1, 0.3, 0.0, 0.6])
    (column,) = _quietly(weights[None], ONE_COLUMN, np.zeros(4, np.int8), (1, 8), (1, 8)).transpose(0, 2, 1)[0]
    assert not np.isnan(column).any()
    assert column[0] == pytest.approx(0.2) and column[-1] == pytest.approx(0.3)
    assert column[:4].mean() < column[4:].mean()
