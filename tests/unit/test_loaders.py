"""Benchmark loaders (POPE, MMBench, SEED-Bench, Q-Bench) on small files in their public formats.

Every expected value is written by hand from the fixture files (``tests/fixtures_benchmarks.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.benchmarks.images import ImageLoadError
from attnwh.extract.benchmarks.registry import Sample
from attnwh.extract.benchmarks.templates import render_question
from attnwh.extract.toy import shapes
from tests import fixtures_benchmarks as fx


def fields(sample: Sample) -> tuple:
    """What a loader decides about a good sample, in one comparable tuple."""
    return (sample.key, sample.question, sample.choices, sample.gold, sample.category, sample.hint, sample.group)


def by_key(samples: list[Sample]) -> dict[str, Sample]:
    return {sample.key: sample for sample in samples}


def assert_image(sample: Sample, size: tuple[int, int]) -> None:
    image = sample.load_image()
    assert (image.mode, image.size) == ("RGB", size)


def assert_broken_image(sample: Sample, *words: str) -> None:
    assert sample.error is None
    with pytest.raises(ImageLoadError) as caught:
        sample.load_image()
    for word in words:
        assert word in str(caught.value)


def assert_error(sample: Sample, *words: str) -> None:
    assert sample.error is not None
    for word in words:
        assert word in sample.error


def load_error(name: str, data: Path, split: str | None = None) -> str:
    """The one-line message of the BenchmarkError a load raises."""
    with pytest.raises(BenchmarkError) as caught:
        get_benchmark(name).load(data, split)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- registrations


@pytest.mark.parametrize(
    ("name", "templates", "splits", "default", "version"),
    [
        ("pope", ("short_answer", "as_is"), ("adversarial", "popular", "random", "all"), "adversarial", "2"),
        ("pope-aokvqa", ("short_answer", "as_is"), ("adversarial", "popular", "random", "all"), "adversarial", "2"),
        ("pope-gqa", ("short_answer", "as_is"), ("adversarial", "popular", "random", "all"), "adversarial", "2"),
        ("mmbench", ("letter_choice", "study_letter_choice"), ("dev", "test"), "dev", "2"),
        ("mmbench-circular", ("letter_choice", "study_letter_choice"), ("dev", "test"), "dev", "2"),
        ("seed-bench", ("letter_choice", "study_seed"), ("test",), "test", "2"),
        ("qbench", ("study_qbench", "study_qbench"), ("dev", "test"), "dev", "3"),
        ("amber-generative", ("as_is", "as_is"), ("test",), "test", "1"),
        ("amber-existence", ("short_answer", "as_is"), ("test",), "test", "1"),
        ("amber-attribute", ("short_answer", "as_is"), ("test",), "test", "1"),
        ("amber-relation", ("short_answer", "as_is"), ("test",), "test", "1"),
    ],
)
def test_registration(name, templates, splits, default, version):
    benchmark = get_benchmark(name)
    assert (benchmark.template_for("llava-eval"), benchmark.template_for("study")) == templates
    assert (benchmark.splits, benchmark.default_split, benchmark.version) == (splits, default, version)
    assert benchmark.data_required and benchmark.data_help and benchmark.description
    assert "--data" in load_error(name, None)


# ---------------------------------------------------------------- POPE question files


def test_pope_question_files(tmp_path):
    samples = get_benchmark("pope").load(fx.pope_folder(tmp_path / "pope"), "adversarial")
    assert [sample.key for sample in samples] == ["1", "2", "3", "4", "5", "line-7", "1#2"]
    good = [fields(sample) for sample in samples[:4]]
    assert good == [
        ("1", "Is there a snowboard in the image?", (), "yes", "adversarial", None, None),
        ("2", "Y a-t-il un éléphant dans l’image ?", (), "no", "adversarial", None, None),
        ("3", "Is there a dog in the image?", (), "no", "adversarial", None, None),
        ("4", "Is there a cup in the image?", (), "yes", "adversarial", None, None),
    ]
    assert {sample.parser for sample in samples} == {"pope"}  # POPE's own rule; the study style reads the first word
    assert get_benchmark("pope").parser_for("study", "pope") == "yes_no" and get_benchmark("pope").parser_for("llava-eval", "pope") == "pope"
    assert_image(samples[0], (32, 24))
    assert_image(samples[1], (20, 30))
    assert_broken_image(samples[2], "COCO_val2014_000000000003.jpg", "not found")
    assert_broken_image(samples[3], "COCO_val2014_000000000004.jpg")
    assert_error(samples[4], "coco_pope_adversarial.json line 5", "maybe")
    assert_error(samples[5], "line 7", "question_id")
    assert_error(samples[6], "key 1 repeats")


def test_pope_other_settings_and_all(tmp_path):
    root = fx.pope_folder(tmp_path / "pope")
    popular = get_benchmark("pope").load(root, "popular")
    assert [fields(sample) for sample in popular] == [("1", "Is there a person in the image?", (), "yes", "popular", None, None)]
    assert_image(popular[0], (18, 18))  # CMYK JPEG
    random_setting = get_benchmark("pope").load(root, "random")
    assert_image(random_setting[0], (26, 14))  # RGBA PNG
    everything = get_benchmark("pope").load(root, "all")
    adversarial = ["adversarial-1", "adversarial-2", "adversarial-3", "adversarial-4", "adversarial-5", "adversarial-line-7", "adversarial-1#2"]
    keys = [*adversarial, "popular-1", "random-1"]
    assert [sample.key for sample in everything] == keys
    assert [sample.category for sample in everything[-2:]] == ["popular", "random"]


def test_pope_single_file_with_images_in_a_sibling_folder(tmp_path):
    """LLaVA's layout: pope/coco/coco_pope_random.json and pope/val2014/."""
    source = fx.pope_folder(tmp_path / "source")
    coco = tmp_path / "pope" / "coco"
    coco.mkdir(parents=True)
    (source / "coco_pope_random.json").rename(coco / "coco_pope_random.json")
    (source / "val2014").rename(tmp_path / "pope" / "val2014")
    samples = get_benchmark("pope").load(coco / "coco_pope_random.json", "random")
    assert [fields(sample) for sample in samples] == [("1", "Is there a kite in the image?", (), "no", "random", None, None)]
    assert_image(samples[0], (26, 14))


def test_pope_single_file_of_another_split_is_refused(tmp_path):
    root = fx.pope_folder(tmp_path / "pope")
    message = load_error("pope", root / "coco_pope_popular.json", "adversarial")
    assert "coco_pope_popular.json" in message and "--split popular" in message


def test_pope_bad_files(tmp_path):
    broken = fx.write_lines(tmp_path / "bad" / "coco_pope_adversarial.json", [fx.json_line({"question_id": 1}), '{"question_id": 2, "text": '])
    message = load_error("pope", broken, "adversarial")
    assert "coco_pope_adversarial.json: line 2, column" in message and "JSON" in message
    unlabelled_line = fx.json_line({"question_id": 1, "image": "x.jpg", "text": "Is there a cat?"})
    unlabelled = fx.write_lines(tmp_path / "llava" / "coco_pope_adversarial.json", [unlabelled_line])
    message = load_error("pope", unlabelled, "adversarial")
    assert "coco_pope_adversarial.json: line 1" in message and "label" in message
    (tmp_path / "empty").mkdir()
    assert "coco_pope_adversarial.json" in load_error("pope", tmp_path / "empty")


# ---------------------------------------------------------------- POPE Parquet


@pytest.mark.parametrize(
    ("name", "first", "size"), [("pope-aokvqa", ("1", "Is there a building in the image?", "yes"), (12, 10)), ("pope-gqa", ("1", "Is there a bird in the image?", "yes"), (14, 9))]
)
def test_pope_seem_arrays_each_source_its_own_files(tmp_path, name, first, size):
    root = fx.pope_seem_folder(tmp_path / "seem")
    samples = get_benchmark(name).load(root, None)
    assert [(sample.key, sample.question, sample.gold) for sample in samples][0] == first
    assert len(samples) == 2 and {sample.category for sample in samples} == {"adversarial"}
    assert_image(samples[0], size)
    everything = get_benchmark(name).load(root, "all")
    assert [sample.key for sample in everything] == ["adversarial-1", "adversarial-2", "popular-1", "random-1"]
    prefix = name.removeprefix("pope-")
    single = get_benchmark(name).load(root / f"{prefix}_pope_seem_popular.json", "popular")
    assert [sample.key for sample in single] == ["1"]
    other = "pope-gqa" if name == "pope-aokvqa" else "pope-aokvqa"
    assert f"use --benchmark {name}" in load_error(other, root / f"{prefix}_pope_seem_random.json", "random")
    assert f"use --benchmark {name}" in load_error("pope", root / f"{prefix}_pope_seem_random.json", "random")
    assert "no coco_pope_adversarial.json found" in load_error("pope", root)


def test_pope_gqa_missing_image_is_an_error_row_when_loaded(tmp_path):
    samples = get_benchmark("pope-gqa").load(fx.pope_seem_folder(tmp_path / "seem"), "adversarial")
    assert samples[1].error is None
    assert_broken_image(samples[1], "2400000.jpg", "not found")


def test_an_image_name_that_is_a_folder_says_so(tmp_path):
    """An image name naming a folder (a subfolder's name, ``.``) was said to be "not found", sending people looking for a
    missing file; now the error row says it is a folder."""
    items = [{"question_id": 1, "image": "val2014", "text": "Is there a cup in the image?", "label": "no"}]
    fx.write_images(tmp_path / "val2014", {"COCO_val2014_000000000001.jpg": fx.jpeg((8, 6))})
    (tmp_path / "coco_pope_random.json").write_text(json.dumps(items), encoding="utf-8")
    (sample,) = get_benchmark("pope").load(tmp_path, "random")
    assert_broken_image(sample, "val2014", "a folder, not an image file")


def test_pope_reads_a_json_array_and_crlf_lines_alike(tmp_path):
    items = [{"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cup in the image?", "label": "no"}]
    fx.write_images(tmp_path / "val2014", {"COCO_val2014_000000000001.jpg": fx.jpeg((8, 6))})
    (tmp_path / "coco_pope_random.json").write_text(json.dumps(items, indent=4), encoding="utf-8")
    (tmp_path / "coco_pope_popular.json").write_bytes((json.dumps(items[0]) + "\r\n").encode())
    for split in ("random", "popular"):
        samples = get_benchmark("pope").load(tmp_path, split)
        assert [(sample.key, sample.question, sample.gold, sample.category) for sample in samples] == [("1", "Is there a cup in the image?", "no", split)]


def test_pope_parquet(tmp_path):
    root = fx.pope_parquet_folder(tmp_path / "POPE")
    samples = get_benchmark("pope").load(root, None)  # the default split: adversarial
    assert [fields(sample) for sample in samples] == [
        ("1", "Is there a snowboard in the image?", (), "yes", "adversarial", None, None),
        ("2", "Y a-t-il un éléphant dans l’image ?", (), "no", "adversarial", None, None),
    ]
    assert_image(samples[0], (22, 11))  # palette PNG in a {bytes, path} struct
    assert_broken_image(samples[1], "test-00001-of-00002.parquet row 1")
    everything = get_benchmark("pope").load(root, "all")
    assert [sample.key for sample in everything] == ["adversarial-1", "popular-1", "adversarial-2", "random-1"]
    assert_image(everything[1], (15, 25))
    assert_image(everything[3], (10, 40))  # CMYK JPEG as plain bytes
    single = get_benchmark("pope").load(root / "data" / "test-00001-of-00002.parquet", "random")
    assert [fields(sample) for sample in single] == [("1", "Is there a kite in the image?", (), "yes", "random", None, None)]


def test_pope_parquet_bad_files(tmp_path):
    wrong = tmp_path / "wrong" / "test.parquet"
    wrong.parent.mkdir()
    pq.write_table(pa.table({"question_id": ["1"], "text": ["Is there a cat?"]}), wrong)
    message = load_error("pope", wrong.parent)
    assert "test.parquet" in message and "question, answer, image, category missing" in message
    garbage = tmp_path / "garbage" / "test.parquet"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not parquet at all")
    assert "test.parquet: not a readable Parquet file" in load_error("pope", garbage)


# ---------------------------------------------------------------- MMBench


def mmbench_file(tmp_path: Path) -> Path:
    return fx.write_tsv(tmp_path / "MMBench_DEV_EN.tsv", fx.MMBENCH_HEADER, fx.mmbench_rows())


def test_mmbench(tmp_path):
    samples = get_benchmark("mmbench").load(mmbench_file(tmp_path), "dev")
    assert [sample.key for sample in samples] == ["0", "1", "2", "3", "4", "5", "6", "7"]
    good = [fields(samples[index]) for index in (0, 1, 2, 3, 6, 7)]
    assert good == [
        ("0", "Which colour dominates this picture?", ("red", "green", "blue", "yellow"), "C", "attribute_recognition", None, None),
        ("1", "Quel est l’objet au centre ?", ("a cat", "a dog"), "B", "object_localization", 'The picture was taken at noon.\nIt is "sunny".', None),
        ("2", "How many apples are there?", ("one", "two", "four"), "C", "attribute_recognition", None, None),  # D relettered C
        ("3", "Is the square larger than the circle?", ("yes", "no"), "A", "attribute_recognition", None, None),
        ("6", "What is broken here?", ("the image", "nothing"), "A", "attribute_recognition", None, None),
        ("7", "Where is the dot?", ("left", "right"), "B", "attribute_recognition", None, None),
    ]
    assert {sample.parser for sample in samples} == {"letter"}
    assert_image(samples[0], (40, 30))
    assert_image(samples[1], (16, 16))  # grayscale PNG
    assert_image(samples[2], (24, 12))  # CMYK JPEG
    assert_image(samples[3], (40, 30))  # the image of row index 0
    assert_error(samples[4], "MMBench_DEV_EN.tsv line 7", "'D'", "A, B")
    assert_error(samples[5], "line 8", "question")
    assert_broken_image(samples[6], "line 9")
    assert_broken_image(samples[7], "line 11", "99")


def test_mmbench_prompt(tmp_path):
    sample = get_benchmark("mmbench").load(mmbench_file(tmp_path), "dev")[1]
    expected = 'The picture was taken at noon.\nIt is "sunny".\nQuel est l’objet au centre ?\nA. a cat\nB. a dog\nAnswer with the option\'s letter from the given choices directly.'
    assert render_question("letter_choice", sample) == expected


def test_mmbench_circular(tmp_path):
    samples = get_benchmark("mmbench-circular").load(mmbench_file(tmp_path), None)
    keys = ["0-c0", "0-c1", "0-c2", "0-c3", "1-c0", "1-c1", "2-c0", "2-c1", "2-c2", "3-c0", "3-c1", "4-c0", "5-c0", "6-c0", "6-c1", "7-c0", "7-c1"]
    assert [sample.key for sample in samples] == keys
    found = by_key(samples)
    rotations = [(key, found[key].choices, found[key].gold, found[key].group) for key in keys[:9]]
    assert rotations == [
        ("0-c0", ("red", "green", "blue", "yellow"), "C", "0"),
        ("0-c1", ("green", "blue", "yellow", "red"), "B", "0"),
        ("0-c2", ("blue", "yellow", "red", "green"), "A", "0"),
        ("0-c3", ("yellow", "red", "green", "blue"), "D", "0"),
        ("1-c0", ("a cat", "a dog"), "B", "1"),
        ("1-c1", ("a dog", "a cat"), "A", "1"),
        ("2-c0", ("one", "two", "four"), "C", "2"),
        ("2-c1", ("two", "four", "one"), "B", "2"),
        ("2-c2", ("four", "one", "two"), "A", "2"),
    ]
    rotated = found["1-c1"]
    assert (rotated.question, rotated.hint, rotated.category) == ("Quel est l’objet au centre ?", fx.MMBENCH_HINT, "object_localization")
    assert_image(found["0-c3"], (40, 30))
    assert_error(found["4-c0"], "line 7")
    assert found["4-c0"].group == "4"


def test_mmbench_test_split_without_answers_and_folder_search(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "answer"} for row in fx.mmbench_rows()[:2]]
    header = [name for name in fx.MMBENCH_HEADER if name != "answer"]
    fx.write_tsv(tmp_path / "MMBench_TEST_EN.tsv", header, rows)
    fx.write_tsv(tmp_path / "MMBench_TEST_CN.tsv", header, rows[:1])
    samples = get_benchmark("mmbench").load(tmp_path, "test")
    assert [(sample.key, sample.gold, sample.error) for sample in samples] == [("0", None, None), ("1", None, None)]
    assert "no MMBench dev TSV" in load_error("mmbench", tmp_path, "dev")
    assert "--split test" in load_error("mmbench", tmp_path / "MMBench_TEST_EN.tsv", "dev")


def test_mmbench_bad_files(tmp_path):
    row = {"index": "1", "question": "Why?", "B": "x", "answer": "A"}
    no_images = fx.write_tsv(tmp_path / "a" / "MMBench_DEV_EN.tsv", ["index", "question", "B", "answer"], [row])
    message = load_error("mmbench", no_images)
    assert "MMBench_DEV_EN.tsv: line 1" in message and "A, image missing" in message
    short_row = mmbench_file(tmp_path / "b")
    with open(short_row, "a", encoding="utf-8") as handle:
        handle.write("8\tA question with too few cells\tnan\n")
    assert "MMBench_DEV_EN.tsv: line 12: 3 tab-separated cells, the header has 14" in load_error("mmbench", short_row)
    latin = tmp_path / "c" / "MMBench_DEV_EN.tsv"
    latin.parent.mkdir()
    latin.write_bytes("\t".join(fx.MMBENCH_HEADER).encode() + b"\n0\tCaf\xe9?\n")
    assert "MMBench_DEV_EN.tsv: line 2, column 6: byte 0xe9 is not UTF-8" in load_error("mmbench", latin)


# ---------------------------------------------------------------- SEED-Bench


def test_seed_bench_json(tmp_path):
    samples = get_benchmark("seed-bench").load(fx.seed_folder(tmp_path / "seed"), None)
    assert [sample.key for sample in samples] == ["101669", "2", "3", "4"]  # the video question is skipped
    options = ("One", "Two", "Three", "Four")
    assert [fields(sample) for sample in samples[:3]] == [
        ("101669", "How many towels are in the image?", options, "B", "Instances Counting", None, None),
        ("2", "Что изображено на картинке?", options, "D", "Scene Understanding", None, None),
        ("3", "How many cars are there?", options, "A", "Instances Counting", None, None),
    ]
    assert_image(samples[0], (30, 20))
    assert_image(samples[1], (12, 34))  # data_id without suffix → img_without_ext.png, a palette PNG
    assert_broken_image(samples[2], "missing.jpg", "not found")
    assert_error(samples[3], "SEED-Bench.json line 6", "'E'")


def test_seed_bench_json_file_itself(tmp_path):
    root = fx.seed_folder(tmp_path / "seed")
    samples = get_benchmark("seed-bench").load(root / "SEED-Bench.json", "test")
    assert_image(samples[0], (30, 20))  # found in the SEED-Bench-image/ folder below it


def test_seed_bench_parquet(tmp_path):
    samples = get_benchmark("seed-bench").load(fx.seed_parquet(tmp_path / "SEED-Bench" / "data" / "test-00000-of-00001.parquet").parents[1], None)
    assert [fields(sample) for sample in samples] == [
        ("11", "What colour is the car?", ("red", "green", "blue", "black"), "C", "Instance Attributes", None, None),
        ("12", "Is it raining?", ("yes", "no", "maybe", "never"), "B", "Visual Reasoning", None, None),
    ]
    assert_image(samples[0], (14, 9))  # CMYK JPEG in a one-image list
    assert_broken_image(samples[1], "row 3", "empty")


def test_seed_bench_bad_files(tmp_path):
    no_questions = tmp_path / "a" / "SEED-Bench.json"
    no_questions.parent.mkdir()
    no_questions.write_text(json.dumps({"question_type": {}}), encoding="utf-8")
    assert "SEED-Bench.json: line 1: no list under key 'questions'" in load_error("seed-bench", no_questions)
    bad_json = tmp_path / "b" / "SEED-Bench.json"
    bad_json.parent.mkdir()
    bad_json.write_text('{"questions": [\n{"question_id": "1",}\n]}', encoding="utf-8")
    assert "SEED-Bench.json: line 2, column 21: not valid JSON" in load_error("seed-bench", bad_json.parent)
    videos_only = tmp_path / "c" / "SEED-Bench.json"
    videos_only.parent.mkdir()
    item = {
        "question_id": "v1",
        "question": "?",
        "choice_a": "a",
        "choice_b": "b",
        "choice_c": "c",
        "choice_d": "d",
        "answer": "A",
        "data_id": "v1.mp4",
        "data_type": "video",
        "question_type_id": 10,
    }
    videos_only.write_text(json.dumps({"questions": [item]}), encoding="utf-8")
    assert "no question has data_type image" in load_error("seed-bench", videos_only)


# ---------------------------------------------------------------- Q-Bench


def test_qbench_dev(tmp_path):
    samples = get_benchmark("qbench").load(fx.qbench_folder(tmp_path / "qbench"), "dev")
    assert [sample.key for sample in samples] == ["00079.jpg", "00080.png", "00081.jpg", "00082.jpg", "00083.jpg", "00084.jpg"]
    assert [fields(sample) for sample in samples[:3] + samples[5:]] == [
        ("00079.jpg", "How is the lighting of this image?", ("High", "Low", "Medium"), "C", "how / in-context other", None, None),
        ("00080.png", "Is this image blurry?", ("Yes", "No"), "B", "yes-or-no / distortion", None, None),
        ("00081.jpg", "Какое искажение есть на этом изображении?", ("Шум", "Размытие", "Пересвет", "Нет"), "A", "what / other low-level", None, None),
        ("00084.jpg", "What is the colour tone?", ("Warm", "Cold"), "A", "what / in-context distortion", None, None),
    ]
    assert_image(samples[0], (28, 21))
    assert_image(samples[1], (9, 19))  # RGBA PNG
    assert_image(samples[2], (33, 11))  # grayscale JPEG
    assert_error(samples[3], "llvisionqa_dev.json line 5", "1 candidates")
    assert_error(samples[4], "line 6", "'None'")
    assert_broken_image(samples[5], "00084.jpg", "not found")


def test_qbench_test_split_and_single_file(tmp_path):
    root = fx.qbench_folder(tmp_path / "qbench")
    samples = get_benchmark("qbench").load(root, "test")
    expected = ("00090.jpg", "How is the focus of this image?", ("Sharp", "Soft"), None, "how / distortion", None, None)
    assert [fields(sample) for sample in samples] == [expected]
    assert_image(samples[0], (5, 7))
    single = get_benchmark("qbench").load(root / "llvisionqa_dev.json", "dev")
    assert_image(single[0], (28, 21))
    assert "--split test" in load_error("qbench", root / "llvisionqa_test.json", "dev")


def test_qbench_bad_files(tmp_path):
    not_a_list = tmp_path / "llvisionqa_dev.json"
    not_a_list.write_text('{"img_path": "1.jpg"}', encoding="utf-8")
    assert "llvisionqa_dev.json: line 1: the document is a JSON object" in load_error("qbench", not_a_list)
    other_keys = tmp_path / "other" / "llvisionqa_dev.json"
    other_keys.parent.mkdir()
    other_keys.write_text('[\n{"image": "1.jpg", "question": "Why?"}\n]', encoding="utf-8")
    message = load_error("qbench", other_keys.parent)
    assert "llvisionqa_dev.json: line 2" in message and "img_path, candidates" in message


# ---------------------------------------------------------------- AMBER


def annotation_line(root: Path, number: int) -> int:
    """The line an annotation of the fixture starts on, read from the file (its ``{`` is the line above its id)."""
    lines = (root / "data" / "annotations.json").read_text(encoding="utf-8").split("\n")
    return next(place for place, line in enumerate(lines, start=1) if line.strip() == f'"id": {number},') - 1


def test_amber_generative(tmp_path):
    root = fx.amber_folder(tmp_path / "amber")
    samples = get_benchmark("amber-generative").load(root, None)
    assert [sample.key for sample in samples] == ["1", "2", "3", "4", "5", "6", "13", "line-37", "1#2"]
    good = samples[:3]
    assert [fields(sample) for sample in good] == [(key, "Describe this image.", (), None, "generative", None, None) for key in ("1", "2", "3")]
    assert {sample.parser for sample in samples} == {"free_text"}
    assert [(sample.objects.truth, sample.objects.hallu) for sample in good] == [
        (tuple(fx.AMBER_ID1_TRUTH), tuple(fx.AMBER_ID1_HALLU)),
        (("ship", "ship", "lake"), ("bird",)),
        (("person",), ("dog",)),
    ]
    vocabulary = good[0].objects.vocabulary
    assert all(sample.objects.vocabulary is vocabulary for sample in good)  # built once per load
    assert (vocabulary.name, vocabulary.version) == ("amber", "1")
    assert set(vocabulary.entries) == {*fx.AMBER_RELATION, *(w for words in fx.AMBER_RELATION.values() for w in words), *fx.AMBER_SAFE_WORDS}
    assert vocabulary.score("A dustbin and two men near leaves.", good[0].objects).hallucinated == 1  # the dustbin
    assert_image(samples[0], (30, 20))
    assert_image(samples[1], (16, 12))
    assert_broken_image(samples[2], "AMBER_3.jpg", "not found")
    assert_error(samples[3], f"annotations.json line {annotation_line(root, 4)}", "discriminative-hallucination", "expected generative")
    assert_error(samples[4], "query_generative.json line 22", "no annotation with id 5")
    assert_error(samples[5], f"annotations.json line {annotation_line(root, 6)}", "lists of object names")
    assert_error(samples[6], "line 32", "query text")
    assert_error(samples[7], "line 37", "not a JSON object")
    assert_error(samples[8], "key 1 repeats")


def test_amber_existence(tmp_path):
    root = fx.amber_folder(tmp_path / "amber")
    samples = get_benchmark("amber-existence").load(root, "test")
    assert [sample.key for sample in samples] == ["8", "9", "10", "11", "12"]
    assert [fields(sample) for sample in samples[:2]] == [
        ("8", "Is there a cloud in this image?", (), "no", "cloud", None, None),
        ("9", "Is there an apple in this image?", (), "yes", "apple", None, None),
    ]
    assert {sample.parser for sample in samples} == {"yes_no"} and all(sample.objects is None for sample in samples)
    assert_image(samples[0], (30, 20))
    assert_image(samples[1], (16, 12))
    assert_error(samples[2], f"annotations.json line {annotation_line(root, 10)}", "'maybe'")
    assert_error(samples[3], f"annotations.json line {annotation_line(root, 11)}", "'generative'")
    assert_error(samples[4], "annotations.json lines", "share id 12")
    prompt = render_question(get_benchmark("amber-existence").template_for("llava-eval"), samples[0])
    assert prompt == "Is there a cloud in this image?\nAnswer the question using a single word or phrase."


def test_amber_query_file_itself_and_the_repository_root(tmp_path):
    root = fx.amber_folder(tmp_path / "amber")
    by_file = get_benchmark("amber-generative").load(root / "data" / "query" / "query_generative.json", None)
    assert [sample.key for sample in by_file][:3] == ["1", "2", "3"]
    assert_image(by_file[0], (30, 20))
    existence = get_benchmark("amber-existence").load(root / "data", None)  # the images in image/ beside data/
    assert existence[0].gold == "no"
    assert_image(existence[1], (16, 12))


def test_amber_bad_files(tmp_path):
    root = fx.amber_folder(tmp_path / "amber")
    data = root / "data"
    relation = dict(fx.AMBER_RELATION, grass="ground")
    fx.write_json(data / "relation.json", relation)
    message = load_error("amber-generative", root)
    assert "relation.json: line 3: 'grass' maps to \"ground\"" in message
    (data / "relation.json").write_text("[]", encoding="utf-8")
    assert "relation.json: line 1: the document is not a JSON object" in load_error("amber-generative", root)
    (data / "relation.json").unlink()
    assert "no relation.json found" in load_error("amber-generative", root)
    assert get_benchmark("amber-existence").load(root, None)[0].gold == "no"  # existence needs no relation.json
    (data / "annotations.json").write_text('[\n{"id": 1,\n"type": }\n]', encoding="utf-8")
    message = load_error("amber-existence", root)
    assert "annotations.json: line 3, column 9: not valid JSON" in message
    (data / "annotations.json").write_text('{"id": 1}', encoding="utf-8")
    assert "annotations.json: line 1: the document is a JSON object; expected a JSON list of AMBER annotations" in load_error("amber-existence", root)
    fx.write_json(data / "query" / "query_discriminative-existence.json", [{"question": "Is there a dog?"}])
    assert "query_discriminative-existence.json: line 2: no item has the keys id, image, query" in load_error("amber-existence", root)
    (data / "query" / "query_discriminative-existence.json").unlink()
    assert "no query_discriminative-existence.json found" in load_error("amber-existence", root)
    copy = fx.amber_folder(tmp_path / "copy")
    (copy / "data" / "safe_words.txt").write_bytes(b"orange\n\xff")
    assert "safe_words.txt: line 2, column 1: byte 0xff is not UTF-8" in load_error("amber-generative", copy)


# ---------------------------------------------------------------- the toy


def test_toy_caption_samples():
    samples = get_benchmark("toy-shapes-caption").load(None, None)
    assert len(samples) == 256 and samples[0].key == "test-00000"
    assert {(sample.question, sample.parser, sample.category, sample.gold) for sample in samples} == {("Describe the shapes in the image .", "free_text", "caption", None)}
    first = shapes.make_caption_item(shapes.SPLIT_SEEDS["test"], 0)
    assert (samples[0].objects.truth, samples[0].objects.hallu) == (first.present, first.absent)
    assert samples[0].load_image().tobytes() == shapes.render(first.scene).tobytes()
    for sample, index in zip(samples, range(256)):
        item = shapes.make_caption_item(shapes.SPLIT_SEEDS["test"], index)
        shown = {placed.shape for placed in item.scene}
        assert set(sample.objects.truth) == shown and set(sample.objects.hallu) == set(shapes.SHAPES) - shown
        assert item.caption == " and ".join(f"a {p.colour} {p.shape}" for p in sorted(item.scene, key=lambda p: p.cell)) + " ."
        score = sample.objects.vocabulary.score(item.caption, sample.objects)
        assert (score.mentions, score.hallucinated, score.truth_mentioned) == (len(shown), 0, len(shown))
    vocabulary = samples[0].objects.vocabulary
    absent = samples[[len(sample.objects.hallu) > 0 for sample in samples].index(True)].objects
    assert vocabulary.score(f"Two {absent.hallu[0]}s.", absent).hallucinated == 1
    assert get_benchmark("toy-shapes-caption").load(None, "train")[0].key == "train-00000"


# sha256 (first 16 hex) of each existing toy benchmark's samples before the caption items were added: they must not change
TOY_DIGESTS = {
    "toy-shapes/test": "fdb58c694febcdd5",
    "toy-shapes/train": "c33b7e3fadaf58c3",
    "toy-shapes/validation": "2e8981322fdd1532",
    "toy-shapes-yesno/test": "97b6299d918a775e",
    "toy-shapes-yesno/train": "13f867ca6bf72784",
    "toy-shapes-yesno/validation": "7d33ba3a68b94a20",
    "toy-shapes-choice/test": "145812df99e6dc7d",
    "toy-shapes-choice/train": "74774b8a5b975011",
    "toy-shapes-choice/validation": "f2a433ac4a5bcdda",
    "toy-shapes-region/test": "e2d9cb79db5e677c",
    "toy-shapes-region/train": "23776e082a8ac3c7",
    "toy-shapes-region/validation": "deab553aa3345d9a",
}


def test_existing_toy_benchmarks_are_unchanged():
    for name_split, expected in TOY_DIGESTS.items():
        name, split = name_split.split("/")
        digest = hashlib.sha256()
        for s in get_benchmark(name).load(None, split):
            digest.update(json.dumps([s.key, s.question, list(s.choices), s.gold, s.category, s.parser, [list(b) for b in s.boxes]]).encode())
            assert s.objects is None
        assert digest.hexdigest()[:16] == expected, name_split
    images = hashlib.sha256()
    for index in range(8):
        images.update(shapes.render(shapes.make_item(1001, index).scene).tobytes())
    assert images.hexdigest()[:16] == "4f8954f9304a82ff"
    assert shapes.caption_vocabulary()[: len(shapes.vocabulary())] == shapes.vocabulary()
    assert "Describe" not in shapes.vocabulary()  # the shipped toys' tokenizers are built from it
