"""Region masks against hand-computed patch grids, per family, and a PointQA extraction with regions.

Every expected token list below is worked out by hand from the tiny models' processor settings
(noted per test), not by the code under test. Token indices are in image-token order.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from attnwh.core.errors import ModelError
from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.discovery import family_of
from attnwh.extract.models import load_model, resolve_source
from attnwh.extract.regions import region_mask, render_box_mask
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava
from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.layout import open_warehouse
from tests.builders.tiny_gemma3 import save_tiny_gemma3
from tests.builders.tiny_onevision import save_tiny_llava_next, save_tiny_onevision
from tests.builders.tiny_qwen import save_tiny_qwen2_5_vl

BUILDERS = {
    "llava": lambda folder: save_tiny_llava(folder, TinyLlavaSpec(n_layers=1)),
    "vipllava": lambda folder: save_tiny_llava(folder, TinyLlavaSpec(n_layers=1, architecture="vipllava")),
    "gemma3": lambda folder: save_tiny_gemma3(folder, n_layers=1),
    "qwen2_5_vl": lambda folder: save_tiny_qwen2_5_vl(folder, n_layers=1),
    "llava_next": lambda folder: save_tiny_llava_next(folder, n_layers=1),
    "llava_onevision": lambda folder: save_tiny_onevision(folder, n_layers=1),
}


@pytest.fixture(scope="module")
def loaded_models(tmp_path_factory):
    """Each tiny family built once, loaded lazily."""
    root = tmp_path_factory.mktemp("region-models")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            folder = BUILDERS[name](root / name)
            cache[name] = load_model(resolve_source(str(folder)), dtype=torch.float32, device=torch.device("cpu"))
        return cache[name]

    return get


def tokens(loaded, size: tuple[int, int], *boxes) -> list[int]:
    image = Image.new("RGB", size, (90, 90, 90))
    mask = region_mask(loaded, image, list(boxes))
    assert mask.dtype == torch.bool and mask.dim() == 1
    return mask.nonzero().flatten().tolist()


def count(loaded, size: tuple[int, int]) -> int:
    return len(region_mask(loaded, Image.new("RGB", size), [(0, 0, 1, 1)]))


# LLaVA / ViP-LLaVA: CLIP processor, shortest edge 64, centre crop 64×64; 16 px patches -> a 4×4 grid, row-major.
@pytest.mark.parametrize("family", ["llava", "vipllava"])
def test_llava_square_image_top_left_quarter(loaded_models, family):
    loaded = loaded_models(family)
    assert count(loaded, (64, 64)) == 16
    assert tokens(loaded, (64, 64), (0, 0, 32, 32)) == [0, 1, 4, 5]
    assert tokens(loaded, (64, 64), (48, 48, 64, 64)) == [15]
    assert tokens(loaded, (64, 64), (0, 0, 64, 64)) == list(range(16))


@pytest.mark.parametrize("family", ["llava", "vipllava"])
def test_llava_wide_image_centre_crop(loaded_models, family):
    loaded = loaded_models(family)
    # 128×64: no resize, the crop keeps x 32..96
    assert tokens(loaded, (128, 64), (0, 0, 30, 64)) == []  # wholly in the cropped-away left margin
    assert tokens(loaded, (128, 64), (100, 0, 128, 64)) == []  # right margin
    assert tokens(loaded, (128, 64), (16, 0, 48, 16)) == [0]  # straddles the left crop edge: visible x 32..48
    assert tokens(loaded, (128, 64), (80, 48, 128, 64)) == [15]  # straddles the right edge: visible x 80..96
    assert tokens(loaded, (128, 64), (16, 0, 48, 16), (80, 48, 128, 64)) == [0, 15]  # two boxes: the union


def test_llava_downscaled_wide_image(loaded_models):
    loaded = loaded_models("llava")
    # 256×128 -> 128×64 (half size), crop keeps resized x 32..96 = original x 64..192
    assert tokens(loaded, (256, 128), (64, 0, 128, 64)) == [0, 1, 4, 5]
    assert tokens(loaded, (256, 128), (0, 0, 60, 128)) == []
    assert tokens(loaded, (256, 128), (160, 96, 192, 128)) == [15]


def test_llava_full_strategy_puts_the_cls_token_first(loaded_models):
    loaded = loaded_models("llava")
    loaded.config.vision_feature_select_strategy = "full"  # CLIP's CLS kept: one extra token before the patches
    try:
        mask = region_mask(loaded, Image.new("RGB", (64, 64)), [(0, 0, 32, 32)])
    finally:
        loaded.config.vision_feature_select_strategy = "default"
    assert len(mask) == 17 and mask.nonzero().flatten().tolist() == [1, 2, 5, 6]


# Gemma 3: resized (no crop) to 32×32, 8 px patches (4×4) average-pooled 2×2 -> 4 tokens of 16×16 px.
def test_gemma3_pooled_tokens_without_crop(loaded_models):
    loaded = loaded_models("gemma3")
    assert count(loaded, (64, 64)) == 4
    assert tokens(loaded, (64, 64), (0, 0, 32, 32)) == [0]
    assert tokens(loaded, (64, 64), (33, 33, 64, 64)) == [3]
    assert tokens(loaded, (128, 64), (64, 32, 128, 64)) == [3]  # squashed to 32×32
    assert tokens(loaded, (128, 64), (120, 0, 128, 8)) == [1]  # the far right margin is kept: no crop
    assert tokens(loaded, (128, 64), (0, 0, 128, 64)) == [0, 1, 2, 3]


# Qwen2.5-VL: smart-resized to multiples of 32 (patch 16 × merge 2); one token per 32×32 px, row-major.
def test_qwen_merged_tokens(loaded_models):
    loaded = loaded_models("qwen2_5_vl")
    assert tokens(loaded, (64, 64), (0, 0, 32, 32)) == [0]  # 64×64: 2×2 tokens
    assert count(loaded, (128, 64)) == 8  # 128×64: 2 rows × 4 columns
    assert tokens(loaded, (128, 64), (96, 32, 128, 64)) == [7]
    assert tokens(loaded, (128, 64), (40, 0, 70, 10)) == [1, 2]
    # 96×48 -> 96×64 (height rounded up to 64): 2 rows × 3 columns; y 0..24 -> 0..32
    assert count(loaded, (96, 48)) == 6
    assert tokens(loaded, (96, 48), (48, 0, 96, 24)) == [1, 2]


# Anyres (32 px views, 8 px patches -> 4×4 per view). Token order: 16 base-view tokens (the image
# squashed to 32×32), then the tiles' unpadded patch grid row by row, each row followed by a newline.
ANYRES_SQUARE_TOP_LEFT = [0, 1, 4, 5] + [16, 17, 18, 19, 25, 26, 27, 28, 34, 35, 36, 37, 43, 44, 45, 46]


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_anyres_square_image(loaded_models, family):
    # 64×64: pinpoint 64×64, 2×2 tiles -> an 8×8 grid (8 px of the original each), rows of 8 + newline
    loaded = loaded_models(family)
    assert count(loaded, (64, 64)) == 16 + 8 * 9
    assert tokens(loaded, (64, 64), (0, 0, 32, 32)) == ANYRES_SQUARE_TOP_LEFT
    newlines = [16 + 9 * row + 8 for row in range(8)]
    assert not set(tokens(loaded, (64, 64), (0, 0, 64, 64))) & set(newlines)
    assert len(tokens(loaded, (64, 64), (0, 0, 64, 64))) == 16 + 64


def test_llava_next_wide_image(loaded_models):
    # 96×48: pinpoint 32×64 (h×w), scaled by 2/3 to fill it exactly: 1×2 tiles -> 4 rows × 8 columns
    loaded = loaded_models("llava_next")
    assert count(loaded, (96, 48)) == 16 + 4 * 9
    # bottom-right quarter: base view rows 2-3, columns 2-3; tiles rows 2-3, columns 4-7
    assert tokens(loaded, (96, 48), (48, 24, 96, 48)) == [10, 11, 14, 15, 38, 39, 40, 41, 47, 48, 49, 50]


def test_llava_onevision_wide_image_unpadded(loaded_models):
    # 96×48: pinpoint 64×96 (h×w), no scaling, padded 8 px top and bottom: 2×3 tiles -> 8 rows × 12
    # columns, unpadded to rows 1..6 -> 6 rows of 12 + newline
    loaded = loaded_models("llava_onevision")
    assert count(loaded, (96, 48)) == 16 + 6 * 13
    # bottom-right quarter: padded y 32..56 -> rows 4-6, after unpadding rows 3-5; columns 6-11
    expected_tiles = [16 + 13 * row + column for row in (3, 4, 5) for column in range(6, 12)]
    assert expected_tiles == [61, 62, 63, 64, 65, 66, 74, 75, 76, 77, 78, 79, 87, 88, 89, 90, 91, 92]
    assert tokens(loaded, (96, 48), (48, 24, 96, 48)) == [10, 11, 14, 15] + expected_tiles


def test_unsupported_architecture_is_named():
    loaded = SimpleNamespace(spec=SimpleNamespace(architecture="FancyVLForConditionalGeneration", family=family_of("fancy_vl")))
    with pytest.raises(ModelError, match="regions are not supported for FancyVLForConditionalGeneration"):
        region_mask(loaded, Image.new("RGB", (8, 8)), [(0, 0, 4, 4)])


def test_box_mask_covers_touched_pixels():
    mask = render_box_mask((10, 6), [(2.5, 1.0, 4.2, 3.0), (9, 5, 9, 5)])
    white = {(x, y) for x in range(10) for y in range(6) if mask.getpixel((x, y)) == (255, 255, 255)}
    assert white == {(x, y) for x in (2, 3, 4) for y in (1, 2)} | {(9, 5)}


def test_pointqa_extraction_stores_regions(tmp_path, tiny_mha):
    """End to end: region statistics are filled, the region is part of the image, the options are stored."""
    (tmp_path / "data" / "VG_100K").mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "data" / "VG_100K" / "1.png")
    Image.new("RGB", (128, 64), (150, 120, 90)).save(tmp_path / "data" / "VG_100K" / "2.png")
    entries = [
        {"id": "q1", "image": "VG_100K/1.png", "bboxes": [[0, 0, 32, 32]], "obj_question": "How many circles are there?", "answer": "2"},
        {"id": "q2", "image": "VG_100K/2.png", "bboxes": [[80, 48, 128, 64]], "obj_question": "How many squares are there?", "answer": "1"},
    ]
    (tmp_path / "data" / "pointQA_twice_test.json").write_text(json.dumps(entries), encoding="utf-8")
    options = ExtractOptions(model=str(tiny_mha), benchmark="pointqa-visual-obj", data=tmp_path / "data", part_size=2, batch_size=2, device="cpu", command=["test"])
    result = run_extract(tmp_path / "wh", options)
    assert (result.parts_written, result.errors) == (1, 0)
    loaded_choices = [list(sample.choices) for sample in get_benchmark("pointqa-visual-obj").load(tmp_path / "data", None)]
    with Catalog(open_warehouse(tmp_path / "wh")) as catalog:
        samples = catalog.query("SELECT sample_key, status, n_image, n_region, choices FROM samples ORDER BY sample_idx").to_pylist()
        metrics = catalog.query(
            "SELECT count(*) AS n, count(region_sum) AS with_region, max(region_sum - image_sum) AS excess, min(region_sum) AS low FROM head_metrics"
        ).to_pylist()[0]
    # hand: the top-left quarter of a 64×64 image is 4 of 16 patches; x 80..128 of 128×64 is visible at 80..96: 1 patch
    assert [(row["sample_key"], row["status"], row["n_image"], row["n_region"]) for row in samples] == [("q1", "ok", 16, 4), ("q2", "ok", 16, 1)]
    assert [row["choices"] for row in samples] == loaded_choices
    assert metrics["n"] == metrics["with_region"] > 0  # never null for samples with boxes
    assert metrics["excess"] <= 1e-6 and metrics["low"] >= 0
    # region_hit: the head's most-attended image token among the boxed ones (hand: q1 tokens 0, 1, 4, 5 of
    # the 4×4 grid; q2 only token 15, x 80..96 and y 48..64 of the crop)
    boxed = {"q1": {0, 1, 4, 5}, "q2": {15}}
    with Catalog(open_warehouse(tmp_path / "wh")) as catalog:
        rows = catalog.query("SELECT s.sample_key, m.image_argmax, m.region_hit FROM head_metrics m JOIN samples s USING (run_id, sample_idx)").to_pylist()
    assert rows and all(row["region_hit"] == float(row["image_argmax"] in boxed[row["sample_key"]]) for row in rows)
    assert {row["region_hit"] for row in rows} == {0.0, 1.0}  # both outcomes occur
    from attnwh.queries.library import open_session, run_mart

    with open_session(tmp_path / "wh") as session:  # as a head score: the share of samples hit
        ranked = run_mart(session, "head_ranking", {"run_id": result.run_id, "score": "region_hit"}).to_pylist()
    with Catalog(open_warehouse(tmp_path / "wh")) as catalog:
        per_head = catalog.query("SELECT layer, head, avg(region_hit) AS share FROM head_metrics WHERE query = 'gen1' GROUP BY ALL").to_pylist()
    hits = {(row["layer"], row["head"]): row["share"] for row in per_head}
    assert {(row["layer"], row["head"]): row["score"] for row in ranked} == pytest.approx(hits)


def test_a_window_that_does_not_reach_the_image_stores_no_entropy_no_argmax_and_no_region_hit(tmp_path):
    """Tiny Gemma 3 (window of 8 keys on layers 0 and 2; 4 image tokens near the prompt's start, a prompt of ~30
    tokens): its sliding-window layers give the image 0 in the prompt query. Nothing there can be concentrated or hit a
    box: entropy, most-attended token and region hit are null (were 0, the first token and a hit), concentration null
    and concentration × sum 0 in the marts; the global layer keeps every value."""
    from attnwh.queries.library import open_session, run_mart

    folder = save_tiny_gemma3(tmp_path / "gemma3", seed=10, randomise_norms=True)
    result = run_extract(tmp_path / "wh", ExtractOptions(model=str(folder), benchmark="toy-shapes-region", limit=4, batch_size=4, device="cpu", rows=False, command=["test"]))
    assert result.errors == 0
    with Catalog(open_warehouse(tmp_path / "wh")) as catalog:
        rows = catalog.query("SELECT layer, image_sum, image_entropy, image_argmax, region_hit, region_entropy FROM head_metrics WHERE query = 'prompt'").to_pylist()
    blind = [row for row in rows if row["image_sum"] == 0]
    seeing = [row for row in rows if row["image_sum"] > 0]
    assert {row["layer"] for row in blind} == {0, 2} and {row["layer"] for row in seeing} == {1}  # the window, not chance
    assert all(row["image_entropy"] is None and row["image_argmax"] is None and row["region_hit"] is None and row["region_entropy"] is None for row in blind)
    assert all(row["image_entropy"] is not None and row["image_argmax"] is not None and row["region_hit"] in (0.0, 1.0) for row in seeing)
    with open_session(tmp_path / "wh") as session:
        heads = run_mart(session, "head_attention").to_pylist()
        ranked = run_mart(session, "head_ranking", {"run_id": result.run_id, "score": "concentration", "query": "prompt"}).to_pylist()
    prompt = [row for row in heads if row["query"] == "prompt"]
    assert all(row["mean_concentration"] is None and row["mean_concentration_x_sum"] == 0 for row in prompt if row["layer"] != 1)
    assert all(row["mean_concentration"] is not None for row in prompt if row["layer"] == 1)
    assert {row["layer"] for row in ranked if row["score"] is not None} == {1}  # blind heads do not top the concentration ranking
