"""Deterministic synthetic scenes: a few coloured shapes on a 2×2 grid, and questions about them.

``make_item`` makes the question items (presence and colour); ``make_caption_item`` the caption items, from
a random stream of their own so the question items stay exactly as they were.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40)}
IMAGE_SIZE = 64
GRID = 2
SPLIT_SEEDS = {"test": 1001, "train": 2002, "validation": 3003}
LETTERS = "ABCD"

YES_NO_SUFFIX = "Answer yes or no ."
LETTER_SUFFIX = "Answer with the letter ."
CAPTION_QUESTION = "Describe the shapes in the image ."
CAPTION_WORDS = ("Describe", "shapes", "and")  # the words caption items use beyond ``vocabulary()``


@dataclass(frozen=True)
class Placed:
    shape: str
    colour: str
    cell: int
    dx: int
    dy: int
    radius: int


@dataclass(frozen=True)
class Item:
    scene: tuple[Placed, ...]
    kind: str  # 'presence' | 'colour'
    question: str
    choices: tuple[str, ...]
    gold: str
    target: Placed | None = None  # the shape a colour question names


@dataclass(frozen=True)
class CaptionItem:
    scene: tuple[Placed, ...]
    question: str
    caption: str  # the reference caption: each shape in cell order, "a red circle and a blue square ."
    present: tuple[str, ...]  # the shapes in the scene, in cell order
    absent: tuple[str, ...]  # the other shapes, in ``SHAPES`` order


def make_scene(rng: random.Random) -> tuple[Placed, ...]:
    count = rng.randint(1, 3)
    cells = rng.sample(range(GRID * GRID), count)
    shapes_used = rng.sample(SHAPES, count)
    cell_size = IMAGE_SIZE // GRID
    placed = []
    for cell, shape in zip(cells, shapes_used):
        radius = rng.randint(cell_size // 4, cell_size // 3)
        slack = cell_size // 2 - radius
        placed.append(Placed(shape, rng.choice(list(COLOURS)), cell, rng.randint(-slack, slack), rng.randint(-slack, slack), radius))
    return tuple(placed)


def make_item(seed: int, index: int) -> Item:
    """Item ``index`` of the split seeded by ``seed``: even indices yes/no, odd indices colour choice."""
    rng = random.Random(seed * 1_000_003 + index)
    scene = make_scene(rng)
    if index % 2 == 0:
        if rng.random() < 0.5:
            target = rng.choice(scene)
            shape, colour, gold = target.shape, target.colour, "yes"
        else:
            present = {(p.shape, p.colour) for p in scene}
            absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
            shape, colour = rng.choice(absent)
            gold = "no"
        question = f"Is there a {colour} {shape} in the image ? {YES_NO_SUFFIX}"
        return Item(scene, "presence", question, (), gold)
    target = rng.choice(scene)
    options = list(COLOURS)
    rng.shuffle(options)
    lines = " ".join(f"{letter} . {colour}" for letter, colour in zip(LETTERS, options))
    question = f"What colour is the {target.shape} ? {lines} {LETTER_SUFFIX}"
    return Item(scene, "colour", question, tuple(options), LETTERS[options.index(target.colour)], target)


def make_caption_item(seed: int, index: int) -> CaptionItem:
    """Caption item ``index`` of the split seeded by ``seed``: a scene, the caption question and the reference caption."""
    rng = random.Random(f"caption/{seed}/{index}")  # a stream apart from ``make_item``'s (a str seed is hashed with SHA-512)
    scene = make_scene(rng)
    ordered = sorted(scene, key=lambda placed: placed.cell)
    caption = " and ".join(f"a {placed.colour} {placed.shape}" for placed in ordered) + " ."
    present = tuple(placed.shape for placed in ordered)
    absent = tuple(shape for shape in SHAPES if shape not in present)
    return CaptionItem(scene, CAPTION_QUESTION, caption, present, absent)


def centre(placed: Placed) -> tuple[int, int]:
    """The pixel centre of a placed shape."""
    cell_size = IMAGE_SIZE // GRID
    return (placed.cell % GRID) * cell_size + cell_size // 2 + placed.dx, (placed.cell // GRID) * cell_size + cell_size // 2 + placed.dy


def box(placed: Placed) -> tuple[float, float, float, float]:
    """The shape's bounding box in pixels (x0, y0, x1, y1), as ``render`` draws it."""
    cx, cy = centre(placed)
    r = placed.radius
    return (float(cx - r), float(cy - r), float(cx + r), float(cy + r))


def render(scene: tuple[Placed, ...]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    for placed in scene:
        cx, cy = centre(placed)
        r = placed.radius
        fill = COLOURS[placed.colour]
        if placed.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif placed.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def vocabulary() -> list[str]:
    """Every word the toy prompts and answers use (for the word-level toy tokenizer)."""
    words = [
        "is",
        "there",
        "a",
        "in",
        "the",
        "image",
        "?",
        "answer",
        "Answer",
        "yes",
        "no",
        "or",
        "with",
        "letter",
        "what",
        "What",
        "colour",
        "Is",
        ".",
        ":",
        "USER",
        "ASSISTANT",
        "\n",
    ]
    words += list(SHAPES) + list(COLOURS) + list(LETTERS)
    return list(dict.fromkeys(words))


def caption_vocabulary() -> list[str]:
    """``vocabulary()`` and the caption items' words after it (kept apart: the shipped toys' tokenizers stay as trained)."""
    return list(dict.fromkeys([*vocabulary(), *CAPTION_WORDS]))
