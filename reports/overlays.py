"""Where a head looks (issue 33): attention rows drawn over the image they read.

The maps are computed from stored rows and the family's layout of image tokens (``extract.regions.token_layout``:
each token's box on the original image, and its view), never by running the model again (DESIGN §17).

Each view (the one view of a fixed-resolution model, Qwen-VL's merged patches, Gemma 3's pooled blocks; anyres' base
view and its tiles) is a regular grid of cells. A view's map is its tokens' attention bilinearly upsampled over the
cells' centres: tent weights of one cell's width around each centre, normalised by their sum, so that a regular grid
gets exactly bilinear interpolation, clamped at its edges (``F.interpolate(mode="bilinear", align_corners=False)``).
A pixel no token of a view reads (a centre crop's margins) has no value in that view. Views are added up in units of
the finest view's cell: anyres' base view spreads a token's attention over the tile cells it covers, so the map reads
"attention per tile token" wherever it is, and a tile token's attention is shown as it is. Row newlines and a kept
CLS feature read no pixel: their attention is not drawn (the figure says how much that is).
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

COLOUR_MAP = "magma"  # perceptually uniform, and dark where nothing is attended
OVERLAY_ALPHA = 0.6
UNREAD_COLOUR = (0.5, 0.5, 0.5)  # pixels no token reads (a centre crop's margins): grey, nearly opaque
UNREAD_ALPHA = 0.85
UNREAD_NOTE = "grey: not read by the model"


def overlay_maps(
    weights: np.ndarray,  # [..., n_image] attention on the image tokens
    boxes: np.ndarray,  # [n_image, 4] x0, y0, x1, y1 in pixels of the original image; NaN: reads no pixel
    views: np.ndarray,  # [n_image] view of each token, -1 where it reads no pixel
    image_size: tuple[int, int],  # (width, height) of the original image
    out_size: tuple[int, int],  # (width, height) of the map
) -> np.ndarray:  # [..., height, width] float32, NaN where no token reads the pixel
    """The attention of ``weights`` on the image, bilinearly upsampled per view and added up over views."""
    weights = np.asarray(weights, dtype=np.float64)
    width, height = image_size
    boxes = _whole_pixels(np.asarray(boxes, dtype=np.float64), width, height)
    xs = (np.arange(out_size[0]) + 0.5) * width / out_size[0]
    ys = (np.arange(out_size[1]) + 0.5) * height / out_size[1]
    spatial = views >= 0
    cells = {int(view): _cell(boxes[views == view]) for view in np.unique(views[spatial])}
    finest = min(cell_width * cell_height for cell_width, cell_height in cells.values()) if cells else 1.0
    total = np.full((*weights.shape[:-1], len(ys), len(xs)), np.nan)
    for view, (cell_width, cell_height) in cells.items():
        tokens = np.flatnonzero(views == view)
        view_boxes = boxes[tokens]
        centre_x, centre_y = _centres(view_boxes[:, 0], view_boxes[:, 2], cell_width, width), _centres(view_boxes[:, 1], view_boxes[:, 3], cell_height, height)
        tent_x = np.clip(1 - np.abs(xs[None, :] - centre_x[:, None]) / cell_width, 0, None)  # [token, x]
        tent_y = np.clip(1 - np.abs(ys[None, :] - centre_y[:, None]) / cell_height, 0, None)  # [token, y]
        inside_x = (xs[None, :] >= view_boxes[:, [0]]) & (xs[None, :] < view_boxes[:, [2]])
        inside_y = (ys[None, :] >= view_boxes[:, [1]]) & (ys[None, :] < view_boxes[:, [3]])
        read = np.einsum("ty,tx->yx", inside_y.astype(float), inside_x.astype(float)) > 0
        norm = np.einsum("ty,tx->yx", tent_y, tent_x)
        value = np.einsum("...t,ty,tx->...yx", weights[..., tokens], tent_y, tent_x) / np.where(norm > 0, norm, 1)
        value = np.where(read & (norm > 0), value * finest / (cell_width * cell_height), np.nan)
        total = np.where(np.isnan(total), value, total + np.nan_to_num(value))
    return total.astype(np.float32)


def _whole_pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes of no extent along an axis widened to the pixel that holds them. Along a side of one pixel every processed
    pixel has the same coordinate, so the layout cannot tell where in it a token reads: its boxes there have no width,
    and a cell of no width would divide by zero and draw nothing."""
    widened = boxes.copy()
    for low, high, side in ((0, 2, width), (1, 3, height)):
        flat = ~np.isnan(boxes[:, low]) & ~(boxes[:, high] > boxes[:, low])
        start = np.clip(np.floor(np.nan_to_num(boxes[:, low])), 0, max(side - 1, 0))
        widened[:, low] = np.where(flat, start, boxes[:, low])
        widened[:, high] = np.where(flat, np.minimum(start + 1, side), boxes[:, high])
    return widened


def _cell(boxes: np.ndarray) -> tuple[float, float]:
    """A view's cell size: the median box (a few boxes are cut by the image's edge or padding)."""
    return float(np.median(boxes[:, 2] - boxes[:, 0])), float(np.median(boxes[:, 3] - boxes[:, 1]))


def _centres(low: np.ndarray, high: np.ndarray, cell: float, side: float) -> np.ndarray:
    """Cell centres along one axis: a box cut by the image's edge (the cell reads padding beyond it) is a whole
    cell that ends (or starts) where the box does."""
    cut = (high - low) < 0.9 * cell
    at_start, at_end = cut & (low <= 0.5), cut & (high >= side - 0.5)
    return np.where(at_start, high - cell / 2, np.where(at_end, low + cell / 2, (low + high) / 2))


@dataclass(frozen=True)
class Panel:
    """One map drawn over the image, with its title (which head, which score)."""

    title: str
    values: np.ndarray  # [height, width], NaN where no token reads the pixel


@dataclass(frozen=True)
class SampleFigure:
    """A sample's image with one or more attention maps, and what the question was and how it was answered.

    ``png()``, ``svg()`` and ``html()`` render it; in Jupyter it shows itself (``_repr_png_``)."""

    image: Image.Image = field(repr=False)
    panels: Sequence[Panel] = field(repr=False)
    heading: str  # run, sample
    question: str
    answer: str
    gold: str
    correct: bool | None
    boxes: Sequence[tuple[float, float, float, float]] = ()  # the benchmark's regions, in pixels of the image
    notes: Sequence[str] = ()  # what the maps leave out (attention on row newlines, ...)
    columns: int = 4
    dpi: int = 100
    panel_inches: float = 3.0

    def verdict(self) -> str:
        return {True: "right", False: "wrong", None: "not scored"}[self.correct]

    def caption_lines(self) -> list[str]:
        unread = [UNREAD_NOTE] if any(np.isnan(panel.values).any() for panel in self.panels) else []
        return [self.heading, f"Q: {self.question}", f"A: {self.answer}   (gold: {self.gold}; {self.verdict()})", *self.notes, *unread]

    def figure(self):
        """A matplotlib figure (Agg: no display needed), laid out in inches (``_Layout``): every colour bar, its ticks and
        its label inside the figure; the numbers are scaled by a power of ten (attention per token is about 1e-3)."""
        from matplotlib import colormaps
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        columns = max(1, min(self.columns, len(self.panels)))
        width, height = self.image.size
        caption = [textwrap.fill(line, width=max(40, int(30 * columns))) for line in self.caption_lines()]
        lines = sum(line.count("\n") + 1 for line in caption), max((panel.title.count("\n") + 1 for panel in self.panels), default=1)
        layout = _Layout(self.panel_inches, height / width, columns, len(self.panels), *lines)
        figure = Figure(figsize=layout.size, dpi=self.dpi)
        figure.suptitle("\n".join(caption), x=0.01, y=layout.caption_top, ha="left", va="top", fontsize=9, parse_math=False, color=self._verdict_colour())
        # opaque here: the alpha per pixel below sets it (a bad colour's own alpha is multiplied by it where matplotlib
        # resamples a map smaller than its panel: 0.85 × 0.85, a lighter grey)
        colour_map = colormaps[COLOUR_MAP].with_extremes(bad=(*UNREAD_COLOUR, 1.0))
        for index, panel in enumerate(self.panels):
            axes = figure.add_axes(layout.panel(index))
            axes.imshow(self.image, extent=(0, width, height, 0), interpolation="bilinear")
            values = np.ma.masked_invalid(panel.values)
            # the map's alpha per pixel: a scalar alpha would also make the unread grey as transparent as the map
            alpha = np.where(np.isnan(panel.values), UNREAD_ALPHA, OVERLAY_ALPHA)
            shown = axes.imshow(values, extent=(0, width, height, 0), cmap=colour_map, alpha=alpha, interpolation="nearest", vmin=0)
            for x0, y0, x1, y1 in self.boxes:
                axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#00e5ff", linewidth=1.5))
            axes.set_title(panel.title, fontsize=8, parse_math=False)
            axes.set_xticks([])
            axes.set_yticks([])
            bar = figure.colorbar(shown, cax=figure.add_axes(layout.bar(index)), format=_per_token_formatter())
            bar.ax.tick_params(labelsize=6)
            bar.ax.yaxis.get_offset_text().set_fontsize(7)  # its superscripts are small
            bar.set_label("attention per token", fontsize=6)
        return figure

    def _verdict_colour(self) -> str:
        return {True: "#1a7f37", False: "#b3261e", None: "#222222"}[self.correct]

    def png(self) -> bytes:
        return self._save("png")

    def rgb(self) -> Image.Image:
        """The figure's pixels as drawn for ``png()``, without encoding them."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(self.figure())
        canvas.draw()
        return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")

    def svg(self) -> bytes:
        return self._save("svg")

    def _save(self, fmt: str) -> bytes:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format=fmt, metadata={"Software": None} if fmt == "png" else {"Date": None})
        return buffer.getvalue()

    def html(self) -> str:
        """A self-contained page: the PNG inlined, the text escaped."""
        caption = "".join(f"<p>{html.escape(line)}</p>" for line in self.caption_lines())
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.heading)}</title></head>"
            f"<body>{caption}<img alt='{html.escape(self.heading, quote=True)}' src='{png_data_uri(self.png())}'></body></html>"
        )

    def save(self, path) -> None:
        """Write ``path`` as PNG, SVG or a self-contained HTML page, by its suffix."""
        from pathlib import Path

        path = Path(path)
        writers = {".png": self.png, ".svg": self.svg}
        if path.suffix.lower() == ".html":
            path.write_text(self.html(), encoding="utf-8")
        elif path.suffix.lower() in writers:
            path.write_bytes(writers[path.suffix.lower()]())
        else:
            raise ValueError(f"a picture is written as .png, .svg or .html, not {path.name!r}")

    def _repr_png_(self) -> bytes:
        return self.png()


_SUPERSCRIPT = str.maketrans("-0123456789", "\N{SUPERSCRIPT MINUS}⁰¹²³⁴⁵⁶⁷⁸⁹")


def _per_token_formatter():
    """A colour bar's numbers: plain, scaled by a power of ten written ×10⁻³ above the bar beyond 1e-2 .. 1e3. Plain
    text, not matplotlib's math text, which parsed every number again (a third of a picture's time)."""
    from matplotlib.ticker import ScalarFormatter

    class PerToken(ScalarFormatter):
        def get_offset(self) -> str:
            return "×10" + str(self.orderOfMagnitude).translate(_SUPERSCRIPT) if len(self.locs) and self.orderOfMagnitude else ""

    formatter = PerToken(useOffset=False, useMathText=False)
    formatter.set_powerlimits((-2, 3))
    return formatter


@dataclass(frozen=True)
class _Layout:
    """Where a figure's caption, panels and colour bars lie, in inches. Fixed sizes, not a layout engine: matplotlib's
    constrained layout measured every tick label again on each draw, half of a picture's time. A row is the panels'
    titles (8 pt) above the panels; right of each panel its colour bar, 0.7 of the panel's height, and room for the
    bar's numbers and label (6 pt: at most five characters, as ``ScalarFormatter`` writes them with an offset); the
    caption (9 pt) above the rows."""

    panel_inches: float
    aspect: float  # the image's height / width: the panels keep it
    columns: int
    panels: int
    caption_lines: int
    title_lines: int

    MARGIN = 0.06  # left of each panel
    ROW_GAP = 0.1  # below each row: half a bar's lowest number may reach below it
    BAR_PAD = 0.24  # the bar's offset text (×10⁻³) starts left of the bar: clear of the panel
    BAR_WIDTH = 0.1
    BAR_TEXT = 0.5  # tick marks, numbers and the label right of a bar
    BAR_SHARE = 0.7  # of the panel's height, centred on it
    BAR_LEAST = 0.95  # inches: its label's length, and a little (a wide image's bar reaches below its panel)

    @property
    def cell(self) -> tuple[float, float]:
        width = max(1.3 * self.panel_inches, self.MARGIN + self.panel_inches + self.BAR_PAD + self.BAR_WIDTH + self.BAR_TEXT)
        return width, self.title_inches + max(self.panel_inches * self.aspect, self.bar_inches) + self.ROW_GAP

    @property
    def bar_inches(self) -> float:
        return max(self.BAR_SHARE * self.panel_inches * self.aspect, self.BAR_LEAST)

    @property
    def title_inches(self) -> float:
        return 0.14 * self.title_lines + 0.12

    @property
    def caption_inches(self) -> float:
        return 0.16 * self.caption_lines + 0.15

    @property
    def size(self) -> tuple[float, float]:
        width, height = self.cell
        return width * self.columns, self.caption_inches + height * -(-self.panels // self.columns)

    @property
    def caption_top(self) -> float:
        return 1 - 0.05 / self.size[1]

    def panel(self, index: int) -> tuple[float, float, float, float]:
        """Panel ``index``'s axes as (left, bottom, width, height), fractions of the figure."""
        (cell_width, cell_height), (width, height) = self.cell, self.size
        left = (index % self.columns) * cell_width + self.MARGIN
        top = self.caption_inches + (index // self.columns) * cell_height + self.title_inches
        panel_height = self.panel_inches * self.aspect
        return left / width, 1 - (top + panel_height) / height, self.panel_inches / width, panel_height / height

    def bar(self, index: int) -> tuple[float, float, float, float]:
        """Panel ``index``'s colour bar as (left, bottom, width, height), fractions of the figure."""
        left, bottom, panel_width, panel_height = self.panel(index)
        width, height = self.size
        bar_height = self.bar_inches / height
        top = bottom + panel_height - max(0.0, panel_height - bar_height) / 2  # centred, or from the panel's top down
        return left + panel_width + self.BAR_PAD / width, top - bar_height, self.BAR_WIDTH / width, bar_height


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail_data_uri(figure: SampleFigure, quality: int = 70) -> str:
    """The figure as a compressed JPEG data URI (a fifth of the PNG's bytes for heat maps over photographs), for
    pages that inline many pictures."""
    buffer = io.BytesIO()
    figure.rgb().save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
