"""Every supported family through the one capture path, against eager attention on the same weights.

Each family is a tiny random-weight model built from configs (norm weights randomised), saved, and
loaded with ``from_pretrained`` + ``AutoProcessor``. The batch is left-padded and, where the family
allows it, its images have different sizes, so samples carry different numbers of image tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.capture import CaptureSpec
from attnwh.extract.generation import encode_batch, generate_with_capture
from attnwh.extract.models import load_config, load_model, resolve_source
from attnwh.extract.prompts import FORMATS
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.extract.segments import image_spans
from attnwh.extract.stats import STAT_NAMES
from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava
from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.layout import open_warehouse
from tests.builders.tiny_gemma3 import save_tiny_gemma3
from tests.builders.tiny_onevision import save_tiny_llava_next, save_tiny_onevision
from tests.builders.tiny_paligemma import save_tiny_paligemma
from tests.builders.tiny_qwen import save_tiny_qwen2_5_vl, save_tiny_qwen2_vl
from tests.reference import reference_generate

TOLERANCE = 1e-6
IMAGE_SIZES = [(64, 64), (96, 48), (48, 96)]  # (width, height)

ImageTokenCount = Callable  # (processor, encoded batch, config) -> image tokens per sample


def fixed_count(count_of_config: Callable) -> ImageTokenCount:
    """Families whose image becomes a fixed number of tokens whatever its size (LLaVA-1.5, Gemma 3)."""
    return lambda processor, encoded, config: [count_of_config(config)] * len(encoded["input_ids"])


def anyres_count(processor, encoded, config) -> list[int]:
    """LLaVA-NeXT / OneVision: base view + unpadded tiles + one newline per row, as the processor computes it."""
    return processor._get_num_multimodal_tokens(image_sizes=encoded["image_sizes"].tolist())["num_image_tokens"]


def qwen_count(processor, encoded, config) -> list[int]:
    """Qwen2(.5)-VL: one token per merge×merge block of the patch grid (temporal × height × width)."""
    merge = processor.image_processor.merge_size
    return (encoded["image_grid_thw"].prod(dim=-1) // merge**2).tolist()


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[Path], Path]
    expected_image_tokens: ImageTokenCount
    varies_with_size: bool  # images of other sizes give other token counts


FAMILIES = [
    Family(
        "llava",
        lambda folder: save_tiny_llava(folder, TinyLlavaSpec(n_kv_heads=2, seed=3, randomise_norms=True)),
        fixed_count(lambda config: (config.vision_config.image_size // config.vision_config.patch_size) ** 2),
        False,
    ),
    Family(
        "vipllava",
        lambda folder: save_tiny_llava(folder, TinyLlavaSpec(n_kv_heads=2, seed=4, randomise_norms=True, architecture="vipllava")),
        fixed_count(lambda config: (config.vision_config.image_size // config.vision_config.patch_size) ** 2),
        False,
    ),
    Family("llava_next", lambda folder: save_tiny_llava_next(folder, seed=5, randomise_norms=True), anyres_count, True),
    Family("llava_next_mistral", lambda folder: save_tiny_llava_next(folder, seed=6, randomise_norms=True, text_model="mistral"), anyres_count, True),
    Family("llava_onevision", lambda folder: save_tiny_onevision(folder, seed=7, randomise_norms=True), anyres_count, True),
    Family("qwen2_5_vl", lambda folder: save_tiny_qwen2_5_vl(folder, seed=8, randomise_norms=True), qwen_count, True),
    Family("qwen2_vl", lambda folder: save_tiny_qwen2_vl(folder, seed=9, randomise_norms=True), qwen_count, True),
    Family("gemma3", lambda folder: save_tiny_gemma3(folder, seed=10, randomise_norms=True), fixed_count(lambda config: config.mm_tokens_per_image), False),
    # no Family data in attnwh for PaliGemma: discovered from its config and module tree alone, with its real processor
    Family(
        "paligemma",
        lambda folder: save_tiny_paligemma(folder, seed=11, randomise_norms=True),
        fixed_count(lambda config: (config.vision_config.image_size // config.vision_config.patch_size) ** 2),
        False,
    ),
    # PaliGemma 2: Gemma 2 caps its attention logits (transformers' SDPA refuses them) and its final logits
    Family(
        "paligemma2",
        lambda folder: save_tiny_paligemma(folder, seed=12, randomise_norms=True, text_model="gemma2"),
        fixed_count(lambda config: (config.vision_config.image_size // config.vision_config.patch_size) ** 2),
        False,
    ),
]


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda family: family.name)
def family_model(request, tmp_path_factory):
    family = request.param
    return family, family.build(tmp_path_factory.mktemp("family") / family.name)


def sized_images(samples):
    return [sample.load_image().resize(size, Image.BICUBIC) for sample, size in zip(samples, IMAGE_SIZES)]


def test_family_rows_equal_eager_attention(family_model):
    family, folder = family_model
    loaded = load_model(resolve_source(str(folder)), dtype=torch.float32, device=torch.device("cpu"))
    assert loaded.config.get_text_config()._attn_implementation == "attnwh_capture"
    samples = get_benchmark("toy-shapes").load(None, "test")[: len(IMAGE_SIZES)]
    prompts = [FORMATS["chat_template"].render(loaded.processor, sample.question) for sample in samples]
    encoded = encode_batch(loaded, sized_images(samples), prompts)
    assert (encoded["attention_mask"] == 0).any(), "the batch must be left-padded"
    _, session, segments = generate_with_capture(loaded, encoded, CaptureSpec(("prompt", "gen1")), max_new_tokens=2)

    reference = reference_generate(folder, encoded, 2, output_attentions=True)
    rows = session.stacked_rows()
    for layer in range(loaded.info["n_layers"]):
        for step, query in enumerate(("prompt", "gen1")):
            expected = reference.attentions[step][layer][:, :, -1, :]
            captured = rows[query][layer]
            window = expected.shape[-1]  # a sliding-window layer's decode step sees only the last keys
            assert captured.shape[:2] == expected.shape[:2] and captured.shape[-1] == encoded["input_ids"].shape[1] + step
            assert (captured[..., -window:] - expected).abs().max().item() <= TOLERANCE, (query, layer)
            assert captured[..., :-window].abs().sum().item() == 0, (query, layer)

    spans = image_spans(segments)
    counts = [span.n_image for span in spans]
    assert counts == family.expected_image_tokens(loaded.processor, encoded, loaded.config)
    if family.varies_with_size:
        assert len(set(counts)) > 1, "images of different sizes should give different token counts"
    image_ids = torch.tensor(loaded.spec.image_token_ids)
    for span, ids, mask in zip(spans, encoded["input_ids"], encoded["attention_mask"]):
        real = ids[mask.bool()]
        image_positions = torch.isin(real, image_ids).nonzero().flatten()
        assert (span.image_start, span.image_end) == (int(image_positions[0]), int(image_positions[-1]) + 1)


GEN_STEPS = 5


def test_family_every_generated_step_equals_eager_attention(family_model):
    """``gen``: the statistics of every step, reduced here by hand from eager attention's rows of the same steps,
    and the lens of each generated token: rank 1 at the last layer, with the probability eager generation gave it."""
    family, folder = family_model
    loaded = load_model(resolve_source(str(folder)), dtype=torch.float32, device=torch.device("cpu"))
    samples = get_benchmark("toy-shapes").load(None, "test")[: len(IMAGE_SIZES)]
    prompts = [FORMATS["chat_template"].render(loaded.processor, sample.question) for sample in samples]
    encoded = encode_batch(loaded, sized_images(samples), prompts)
    loaded.eos_token_ids = ()  # every row runs all steps (the reference ignores EOS too): tiny LLaVA's first token is EOS
    generation, session, _ = generate_with_capture(loaded, encoded, CaptureSpec(("gen",)), max_new_tokens=GEN_STEPS)
    assert [len(steps) for steps in generation.steps] == [GEN_STEPS] * len(samples)
    statistics = session.stacked_gen_statistics()  # [step, layer, batch, head, stat]
    reference = reference_generate(folder, encoded, GEN_STEPS, output_attentions=True, output_scores=True)
    prompt_length = encoded["input_ids"].shape[1]
    image = torch.isin(encoded["input_ids"], torch.tensor(loaded.spec.image_token_ids)) & encoded["attention_mask"].bool()
    stat = {name: index for index, name in enumerate(STAT_NAMES)}
    compared = 0
    for row, steps in enumerate(generation.steps):
        assert steps == reference.sequences[row, prompt_length : prompt_length + len(steps)].tolist()
        for step in range(len(steps)):
            for layer in range(loaded.info["n_layers"]):
                expected = reference.attentions[step][layer][row, :, -1, :]  # [head, key]
                window = expected.shape[-1]
                keys = torch.zeros(expected.shape[0], prompt_length + step)
                keys[:, -window:] = expected
                image_keys = torch.nn.functional.pad(image[row], (0, step))
                got = statistics[step, layer, row]
                assert (got[:, stat["image_sum"]] - keys[:, image_keys].sum(-1)).abs().max() <= 1e-5, (step, layer)
                assert (got[:, stat["image_max"]] - keys[:, image_keys].max(-1).values).abs().max() <= 1e-5, (step, layer)
                assert (got[:, stat["generated_sum"]] - keys[:, prompt_length:].sum(-1)).abs().max() <= 1e-5, (step, layer)
                compared += 1
            lens = session.gen_lens[step]
            assert int(lens.target_token[row]) == steps[step]
            assert int(lens.target_rank[-1, row]) == 1
            expected_prob = torch.softmax(reference.scores[step][row].float(), -1)[steps[step]]
            assert abs(float(lens.target_prob[-1, row]) - float(expected_prob)) <= 1e-5
    assert compared == len(samples) * GEN_STEPS * loaded.info["n_layers"]


def test_family_extracts_every_generated_token_on_amber(family_model, tmp_path):
    """``attnwh extract --queries gen --benchmark amber-generative --data DIR`` on the family's tiny model: the authors'
    layout with drawn images; a query whose image is missing (and the fixture's other bad rows) becomes an error row."""
    from tests.fixtures_benchmarks import amber_folder

    _, folder = family_model
    data = amber_folder(tmp_path / "amber")
    options = ExtractOptions(model=str(folder), benchmark="amber-generative", data=data, queries=("gen",), rows=False, batch_size=4, max_new_tokens=3, command=["test"])
    result = run_extract(tmp_path / "wh", options)
    info = load_config(resolve_source(str(folder)))[1].info
    with Catalog(open_warehouse(tmp_path / "wh")) as catalog:
        samples = catalog.query("SELECT sample_idx, sample_key, status, error, truth_objects, object_mentions FROM samples ORDER BY sample_idx").to_pylist()
        steps = dict(tuple(row.values()) for row in catalog.query("SELECT sample_idx, count(*) AS n FROM gen_tokens GROUP BY sample_idx").to_pylist())
        metrics = dict(tuple(row.values()) for row in catalog.query("SELECT sample_idx, count(*) AS n FROM gen_metrics GROUP BY sample_idx").to_pylist())
        assert catalog.query("SELECT count(*) AS n FROM head_metrics").to_pylist() == [{"n": 0}]  # gen alone: no prompt / gen1 rows
    ok = [row for row in samples if row["status"] == "ok"]
    assert result.errors == len(samples) - len(ok) > 0 and len(ok) >= 2
    assert any("AMBER_3.jpg" in (row["error"] or "") for row in samples)  # the missing image: an error row, the run went on
    for row in ok:
        assert row["truth_objects"] > 0 and row["object_mentions"] is not None
        assert 1 <= steps[row["sample_idx"]] <= 3
        assert metrics[row["sample_idx"]] == steps[row["sample_idx"]] * info["n_layers"] * info["n_heads"]
    assert set(steps) == {row["sample_idx"] for row in ok}


def test_family_extracts_into_the_warehouse(family_model, tmp_path):
    family, folder = family_model
    options = ExtractOptions(model=str(folder), limit=4, batch_size=4, part_size=4, max_new_tokens=2, command=["test"])
    result = run_extract(tmp_path / "wh", options)
    assert (result.parts_written, result.errors) == (1, 0)
    info = load_config(resolve_source(str(folder)))[1].info
    with Catalog(open_warehouse(tmp_path / "wh")) as catalog:
        samples = catalog.query("SELECT status, n_image FROM samples ORDER BY sample_idx").to_pylist()
        assert [row["status"] for row in samples] == ["ok"] * 4
        assert all(row["n_image"] > 0 for row in samples)
        totals = catalog.query(
            "SELECT count(*) AS n, min(image_sum + bos_sum + system_sum + prompt_sum + generated_sum) AS low, "
            "max(image_sum + bos_sum + system_sum + prompt_sum + generated_sum) AS high FROM head_metrics"
        ).to_pylist()[0]
    n, low, high = totals["n"], totals["low"], totals["high"]
    assert n == 4 * 2 * info["n_layers"] * info["n_heads"]
    assert abs(low - 1) < 1e-4 and abs(high - 1) < 1e-4  # each row's segments share all of its attention
    show_where_heads_look(family, tmp_path, result.run_id)


def show_where_heads_look(family, tmp_path, run_id) -> None:
    """``attnwh show`` on the family's run: the picture is drawn (the geometry is tested per family in
    test_overlays.py), or refused in one line for a family without a mapping of image tokens (PaliGemma)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from PIL import Image

    from attnwh.face.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["show", run_id, "0", "--top", "2", "--out", str(tmp_path / "show.png"), "--warehouse", str(tmp_path / "wh")])
    if family.name in ("paligemma", "paligemma2"):
        assert exit_.value.code != 0 and err.getvalue().splitlines() == ["attnwh: error: overlays are not supported for PaliGemmaForConditionalGeneration"]
        return
    assert exit_.value.code == 0, err.getvalue()
    with Image.open(tmp_path / "show.png") as picture:
        assert picture.format == "PNG" and picture.width > 500


def test_a_capped_model_is_masked_but_its_cache_is_not_pruned(tmp_path):
    """PaliGemma 2's attention-logit cap: pruning chooses keys by uncapped scores, so ``attnwh prune`` refuses in one
    line (the captured rows and masking are checked against eager attention above)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from attnwh.face.cli import main

    folder = save_tiny_paligemma(tmp_path / "paligemma2", seed=12, text_model="gemma2")
    common = ["--model", str(folder), "--limit", "2", "--warehouse", str(tmp_path / "wh")]
    for command in (["extract"], ["prune"]):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            main([*command, *common])
        lines = [line for line in err.getvalue().splitlines() if line.startswith("attnwh")]
    assert exit_.value.code != 0 and lines == ["attnwh: error: Gemma2Attention caps its attention logits (softcap 0.1): attnwh captures and masks it, but does not prune its cache"]
