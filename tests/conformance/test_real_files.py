"""Conformance with the files the benchmarks' and models' own authors published (``../shared/real``).

Every expectation is read from the raw files themselves (parsed here with ``json`` / ``csv``, not with
attnwh's readers) or written out by hand; the files are never copied into the repository. Without
them (outside this project's machines) the tests skip and say why. ``ATTNWH_REAL_FILES`` points
elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.benchmarks.registry import check_split
from attnwh.extract.benchmarks.templates import render_question
from attnwh.extract.capture import CaptureSpec
from attnwh.extract.generation import encode_batch, generate_with_capture
from attnwh.extract.models import load_model, resolve_source
from attnwh.extract.prompts import FORMATS
from attnwh.face.cli import app
from attnwh.queries.library import open_session
from tests.reference import reference_generate

REAL = Path(os.environ.get("ATTNWH_REAL_FILES") or Path(__file__).resolve().parents[2].parent / "shared" / "real")
BENCHMARKS = REAL / "benchmarks"
LLAVA = REAL / "models" / "llava-hf__llava-1.5-7b-hf"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"the authors' files are not here ({REAL}); set ATTNWH_REAL_FILES")

# Q-Bench's codes as its authors name them (paper, Sec. 3.1: Yes-or-No / What / How; distortions, other
# low-level attributes, and both in context)
QBENCH_TYPES = {0: "yes-or-no", 1: "what", 2: "how"}
QBENCH_CONCERNS = {0: "distortion", 1: "other low-level", 2: "in-context distortion", 3: "in-context other"}
SEED_TYPES = {5: "Instances Counting"}
LLAVA_IMAGE_TOKENS = 576  # (336 / 14)² patches of the real processor
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def raw_records(path: Path) -> list[dict]:
    """A POPE / Q-Bench file's records parsed directly: a JSON array, or JSON lines."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def letter(index: int) -> str:
    return "ABCD"[index]


# ---------------------------------------------------------------- question files


POPE_FILES = [
    ("pope", "pope/coco_pope_adversarial.json", "adversarial"),
    ("pope", "pope/coco_pope_popular.json", "popular"),
    ("pope", "pope/coco_pope_random.json", "random"),
    ("pope", "pope-v0/coco_pope_adversarial.json", "adversarial"),
    ("pope-aokvqa", "pope-seem/aokvqa_pope_seem_adversarial.json", "adversarial"),
    ("pope-gqa", "pope-seem/gqa_pope_seem_adversarial.json", "adversarial"),
]


@pytest.mark.parametrize(("name", "file", "split"), POPE_FILES, ids=[file for _, file, _ in POPE_FILES])
def test_pope_files_load_whole_and_equal_the_raw_records(name, file, split):
    path = BENCHMARKS / file
    raw = raw_records(path)
    for data in (path, path.parent):  # the file itself, and the folder search
        samples = get_benchmark(name).load(data, split)
        assert [sample.error for sample in samples] == [None] * len(raw)
        assert [(s.key, s.question, s.gold, s.category, s.choices) for s in samples] == [(str(r["question_id"]), r["text"], r["label"], split, ()) for r in raw]
    assert len(raw) == 3000


def test_pope_splits_and_sources_are_refused_where_they_do_not_fit():
    assert get_benchmark("pope").default_split == "adversarial"
    default = get_benchmark("pope").load(BENCHMARKS / "pope", None)
    assert [s.key for s in default] == [str(r["question_id"]) for r in raw_records(BENCHMARKS / "pope" / "coco_pope_adversarial.json")]
    with pytest.raises(BenchmarkError, match="holds split adversarial, not popular"):
        get_benchmark("pope").load(BENCHMARKS / "pope" / "coco_pope_adversarial.json", "popular")
    with pytest.raises(BenchmarkError, match="no gqa_pope_seem_popular.json found"):
        get_benchmark("pope-gqa").load(BENCHMARKS / "pope-seem", "popular")
    with pytest.raises(BenchmarkError, match="use --benchmark pope-aokvqa"):
        get_benchmark("pope").load(BENCHMARKS / "pope-seem" / "aokvqa_pope_seem_adversarial.json", "adversarial")
    everything = get_benchmark("pope").load(BENCHMARKS / "pope", "all")
    assert len(everything) == 9000 and len({s.key for s in everything}) == 9000


@pytest.mark.parametrize("split", ["dev", "test"])
def test_qbench_files_load_whole_with_type_and_concern(split):
    path = BENCHMARKS / "qbench" / f"llvisionqa_{split}.json"
    raw = raw_records(path)
    samples = get_benchmark("qbench").load(BENCHMARKS / "qbench", split)
    assert [sample.error for sample in samples] == [None] * len(raw) and len(raw) == 1495
    expected = [
        (
            r["img_path"],
            r["question"],
            tuple(r["candidates"]),
            letter(r["candidates"].index(r["correct_ans"])) if "correct_ans" in r else None,
            f"{QBENCH_TYPES[r['type']]} / {QBENCH_CONCERNS[r['concern']]}",
        )
        for r in raw
    ]
    assert [(s.key, s.question, s.choices, s.gold, s.category) for s in samples] == expected
    assert all(s.category for s in samples)
    with pytest.raises(BenchmarkError, match=f"holds split {split}"):
        get_benchmark("qbench").load(path, "test" if split == "dev" else "dev")
    assert get_benchmark("qbench").default_split == "dev"


def test_seed_bench_keeps_the_image_question_and_skips_video_ones():
    document = json.loads((BENCHMARKS / "seed-bench" / "SEED-Bench.json").read_text(encoding="utf-8"))
    images = [q for q in document["questions"] if q["data_type"] == "image"]
    samples = get_benchmark("seed-bench").load(BENCHMARKS / "seed-bench", None)
    assert [(s.key, s.question, s.choices, s.gold, s.category, s.error) for s in samples] == [
        (q["question_id"], q["question"], (q["choice_a"], q["choice_b"], q["choice_c"], q["choice_d"]), q["answer"], SEED_TYPES[q["question_type_id"]], None) for q in images
    ]
    assert len(document["questions"]) == 4 and len(samples) == 1
    with pytest.raises(BenchmarkError, match="has splits test"):
        check_split(get_benchmark("seed-bench"), "dev")


def test_mmbench_transcribed_rows_keep_hint_options_and_answer():
    path = BENCHMARKS / "mmbench" / "MMBench_DEV_EN_transcribed.tsv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    samples = get_benchmark("mmbench").load(path, "dev")
    expected = []
    for row in rows:
        present = [row[column] for column in "ABCD" if row[column].strip()]
        gold = letter(present.index(row[row["answer"]]))
        expected.append((row["index"], row["question"], row["hint"] or None, tuple(present), gold, row["category"], None))
    assert [(s.key, s.question, s.hint, s.choices, s.gold, s.category, s.error) for s in samples] == expected
    assert len(samples) == 3 and any(s.hint and "\n" in s.hint for s in samples)
    with pytest.raises(BenchmarkError, match="holds split dev, not test"):
        get_benchmark("mmbench").load(path, "test")


# ---------------------------------------------------------------- prompts on real records


def test_prompt_styles_word_real_records_as_their_sources_do():
    seed = get_benchmark("seed-bench")
    sample = seed.load(BENCHMARKS / "seed-bench", None)[0]
    assert render_question(seed.template_for("study"), sample) == ("How many towels are in the image?\nA.One\nB.Two\nC.Three\nD.Four\n" + LETTER_INSTRUCTION)
    assert render_question(seed.template_for("llava-eval"), sample) == ("How many towels are in the image?\nA. One\nB. Two\nC. Three\nD. Four\n" + LETTER_INSTRUCTION)
    qbench = get_benchmark("qbench")
    sample = qbench.load(BENCHMARKS / "qbench", "dev")[0]
    for style in ("study", "llava-eval"):  # att_qbench.py; LLaVA-1.5's model_vqa_qbench.py (scripts/v1_5/eval/qbench.sh)
        assert render_question(qbench.template_for(style), sample) == (
            "How is the lighting of this building?\nChoose between one of the options as follows:\nA. High\nB. Low\nC. Medium\n"
        )
    pope = get_benchmark("pope")
    sample = pope.load(BENCHMARKS / "pope", None)[0]
    assert render_question(pope.template_for("study"), sample) == "Is there a snowboard in the image?"
    assert render_question(pope.template_for("llava-eval"), sample) == ("Is there a snowboard in the image?\nAnswer the question using a single word or phrase.")
    mmbench = get_benchmark("mmbench")
    with_hint = next(s for s in mmbench.load(BENCHMARKS / "mmbench", "dev") if s.hint)
    study = render_question(mmbench.template_for("study"), with_hint)
    llava = render_question(mmbench.template_for("llava-eval"), with_hint)
    assert llava == with_hint.hint + "\n" + study  # the study's code leaves the hint out (commented out in att_mmbench.py)
    assert study == "\n".join([with_hint.question, *(f"{letter(i)}. {c}" for i, c in enumerate(with_hint.choices)), LETTER_INSTRUCTION])


# ---------------------------------------------------------------- the real LLaVA-1.5 processor


PROCESSOR_FILES = (
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
)


@pytest.fixture(scope="module")
def real_llava(tmp_path_factory) -> Path:
    """The real config.json shrunk in depth and width (random weights, real vocabulary, image size, patch
    size and feature layer), saved beside the real tokenizer, processor and chat template files."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig.from_pretrained(LLAVA)
    assert (config.text_config.vocab_size, config.vision_config.image_size, config.vision_config.patch_size, config.vision_feature_layer) == (32064, 336, 14, -2)
    config.text_config.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16})
    config.vision_config.update({"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "projection_dim": 32})
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # a doubled norm would hide behind weights of 1
                parameter.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("real") / "llava-1.5-shrunk"
    model.save_pretrained(folder)
    for name in PROCESSOR_FILES:
        shutil.copyfile(LLAVA / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def pope_with_images(tmp_path_factory) -> Path:
    """The real COCO adversarial question file beside generated stand-ins for the first images it names (COCO's sizes vary)."""
    folder = tmp_path_factory.mktemp("pope-real")
    shutil.copyfile(BENCHMARKS / "pope" / "coco_pope_adversarial.json", folder / "coco_pope_adversarial.json")
    names = list(dict.fromkeys(r["image"] for r in raw_records(folder / "coco_pope_adversarial.json")))[:3]
    for index, (name, size) in enumerate(zip(names, [(640, 480), (427, 640), (500, 333)])):
        Image.new("RGB", size, (40 + 60 * index, 90, 200 - 50 * index)).save(folder / name)
    return folder


def test_real_processor_extracts_576_image_tokens_about_640_in_all(real_llava, pope_with_images, tmp_path):
    from transformers import AutoTokenizer

    warehouse = tmp_path / "wh"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            "--model",
            str(real_llava),
            "--benchmark",
            "pope",
            "--data",
            str(pope_with_images),
            "--limit",
            "12",
            "--prompt-format",
            "llava_v1",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--batch-size",
            "4",
            "--no-rows",
            "--warehouse",
            str(warehouse),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    with open_session(warehouse) as session:
        rows = session.query("select sample_key, status, question, gold, category, prompt, n_image, n_tokens from samples order by sample_idx").to_pylist()
        split = session.query("select split from runs").column(0).to_pylist()
    raw = raw_records(BENCHMARKS / "pope" / "coco_pope_adversarial.json")[:12]
    assert [(r["sample_key"], r["question"], r["gold"], r["category"]) for r in rows] == [(str(x["question_id"]), x["text"], x["label"], "adversarial") for x in raw]
    assert split == ["adversarial"]
    tokenizer = AutoTokenizer.from_pretrained(LLAVA)
    for row in rows:
        assert row["status"] == "ok"
        assert row["n_image"] == LLAVA_IMAGE_TOKENS
        # the prompt holds one <image>, which the processor expands to 576 tokens
        assert row["n_tokens"] == len(tokenizer(row["prompt"])["input_ids"]) - 1 + LLAVA_IMAGE_TOKENS
        assert 630 <= row["n_tokens"] <= 650  # the study: "576 out of 650 tokens"
    assert rows[0]["prompt"].startswith(FORMATS["llava_v1"].template.split(" USER:")[0])


def test_real_processor_rows_equal_eager_attention_in_a_left_padded_batch(real_llava, pope_with_images):
    loaded = load_model(resolve_source(str(real_llava)), dtype=torch.float32, device=torch.device("cpu"))
    samples = get_benchmark("pope").load(pope_with_images, None)
    chosen = [samples[0], samples[7], samples[1]]  # questions of different lengths, images of different sizes
    images = [sample.load_image().convert("RGB") for sample in chosen]
    assert len({image.size for image in images}) > 1
    prompts = [FORMATS["llava_v1"].render(loaded.processor, sample.question) for sample in chosen]
    encoded = encode_batch(loaded, images, prompts)
    assert len(set(encoded["attention_mask"].sum(1).tolist())) > 1  # real left padding
    _, session, _ = generate_with_capture(loaded, encoded, CaptureSpec(("prompt", "gen1"), rows=True), max_new_tokens=2)
    reference = reference_generate(real_llava, encoded, 2, output_attentions=True)
    captured = session.stacked_rows()
    for layer in range(loaded.info["n_layers"]):
        for step, query in enumerate(("prompt", "gen1")):
            expected = reference.attentions[step][layer][:, :, -1, :]
            assert (captured[query][layer] - expected).abs().max().item() <= 1e-6
    image_id = loaded.config.image_token_id
    assert ((encoded["input_ids"] == image_id).sum(1) == LLAVA_IMAGE_TOKENS).all()


def test_real_processor_token_layout_for_overlays(real_llava):
    """The overlays' token layout (issue 33) through the real llava-1.5 processor, worked out by hand: a 640×480 image
    is resized to 448×336 (shortest edge 336) and centre-cropped to x 56..392, i.e. original x 80..560; 24×24 patches
    of 14 processed pixels are 20 original pixels each."""
    import numpy as np

    from attnwh.extract.models import load_geometry, resolve_source
    from attnwh.extract.regions import token_layout

    layout = token_layout(load_geometry(resolve_source(str(real_llava))), (640, 480))
    assert len(layout.views) == 576 and (layout.views == 0).all()
    for token, box in ((0, (80, 0, 100, 20)), (300, (320, 240, 340, 260)), (575, (540, 460, 560, 480))):
        np.testing.assert_allclose(layout.boxes[token], box, atol=1.5, err_msg=f"token {token}")  # 8-bit coordinates over 640 px
