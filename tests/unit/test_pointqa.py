"""PointQA / LookTwice-QA loading: the three file layouts, hand-written expected samples, options, rectangles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.benchmarks.images import ImageLoadError
from attnwh.extract.benchmarks.pointqa import count_options
from attnwh.extract.benchmarks.templates import LETTERS, render_question

GREY = (128, 128, 128)
HINT = " The exemplary object is within the rectangle."
NAMES = [f"pointqa-{variant}-{kind}" for variant in ("visual", "plain") for kind in ("general", "obj", "super")]

VIP_ENTRIES = [  # ViP-LLaVA's pointQA_twice_test.json layout
    {
        "id": "pointQA_twice-1",
        "image": "VG_100K/1.jpg",
        "bboxes": [[10, 8, 30, 28]],
        "general_question": "How many of these are there?",
        "obj_question": "How many crêpes are there?",
        "super_question": "How many of these objects are there?",
        "answer": "3",
    },
    {
        "id": "pointQA_twice-2",
        "image": "VG_100K/2.png",
        "bboxes": [[100, 50, 400, 300]],
        "general_question": "How many of these are there?",
        "obj_question": "How many dogs are there?",
        "super_question": "How many of these beings are there?",
        "answer": 1,
    },
    {  # malformed: x1 < x0
        "id": "pointQA_twice-3",
        "image": "VG_100K/1.jpg",
        "bboxes": [[10, 8, 5, 28]],
        "general_question": "How many of these are there?",
        "obj_question": "How many cats are there?",
        "super_question": "How many of these beings are there?",
        "answer": "2",
    },
    {  # the image file does not exist
        "id": "pointQA_twice-4",
        "image": "VG_100K/missing.jpg",
        "bboxes": [[1, 1, 5, 5]],
        "general_question": "How many of these are there?",
        "obj_question": "How many cups are there?",
        "super_question": "How many of these objects are there?",
        "answer": "0",
    },
]


def write_images(root: Path) -> None:
    (root / "VG_100K").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), GREY).save(root / "VG_100K" / "1.jpg", quality=100)
    Image.new("RGB", (700, 500), GREY).save(root / "VG_100K" / "2.png")


def write_json_array(path: Path, entries: list) -> Path:
    """One entry per line after the opening bracket: entry k is on line k + 1."""
    path.write_text("[\n" + ",\n".join(json.dumps(entry, ensure_ascii=False) for entry in entries) + "\n]\n", encoding="utf-8")
    return path


@pytest.fixture
def vip_data(tmp_path) -> Path:
    write_images(tmp_path)
    write_json_array(tmp_path / "pointQA_twice_test.json", VIP_ENTRIES)
    return tmp_path


def load(name: str, data: Path, split: str | None = None):
    return get_benchmark(name).load(data, split)


def test_six_benchmarks_are_registered_as_letter_choice():
    for name in NAMES:
        benchmark = get_benchmark(name)
        assert (benchmark.template, benchmark.study_template, benchmark.version, benchmark.default_split) == ("letter_choice", "study_letter_choice", "3", "test")
        assert benchmark.data_required and "bboxes" in benchmark.data_help


def test_vip_llava_layout_questions_boxes_and_keys(vip_data):
    expected_questions = {
        "general": ["How many of these are there?", "How many of these are there?"],
        "obj": ["How many crêpes are there?", "How many dogs are there?"],
        "super": ["How many of these objects are there?", "How many of these beings are there?"],
    }
    for kind, questions in expected_questions.items():
        plain = load(f"pointqa-plain-{kind}", vip_data)
        visual = load(f"pointqa-visual-{kind}", vip_data)
        assert [sample.key for sample in plain] == ["pointQA_twice-1", "pointQA_twice-2", "pointQA_twice-3", "pointQA_twice-4"]
        assert [sample.question for sample in plain[:2]] == questions
        assert [sample.question for sample in visual[:2]] == questions  # the rectangle sentence is the prompt's note
        assert [render_question("letter_choice", sample).split("\n")[0] for sample in visual[:2]] == [question + HINT for question in questions]
        assert [render_question("study_letter_choice", sample).split("\n")[0] for sample in visual[:2]] == questions
        assert {sample.note for sample in plain} == {None}
        for samples in (plain, visual):
            assert samples[0].boxes == ((10.0, 8.0, 30.0, 28.0),)
            assert samples[1].boxes == ((100.0, 50.0, 400.0, 300.0),)
            assert samples[3].boxes == ((1.0, 1.0, 5.0, 5.0),)
            assert all(sample.parser == "letter" for sample in samples)


def test_malformed_entry_is_an_error_sample_with_its_line(vip_data):
    samples = load("pointqa-plain-obj", vip_data)
    assert [sample.error is None for sample in samples] == [True, True, False, True]
    assert samples[2].key == "pointQA_twice-3"
    assert samples[2].error == "entry 3 (line 4): box [10, 8, 5, 28] has x1 < x0 or y1 < y0; expected [x0, y0, x1, y1]"


def test_missing_image_fails_only_when_loaded(vip_data):
    sample = load("pointqa-visual-general", vip_data)[3]
    assert sample.error is None
    with pytest.raises(ImageLoadError, match="missing.jpg: image file not found"):
        sample.load_image()


def test_options_are_stable_stored_and_gold_points_at_the_count(vip_data):
    first = load("pointqa-plain-general", vip_data)
    again = load("pointqa-plain-general", vip_data)
    other_variant = load("pointqa-visual-super", vip_data)
    for sample, repeat, other, count in zip(first, again, other_variant, (3, 1, None, 0)):
        if count is None:
            assert sample.choices == () and sample.gold is None
            continue
        assert sample.choices == repeat.choices == other.choices  # the same on every load and in every variant
        assert (sample.gold, repeat.gold, other.gold) == (repeat.gold,) * 3
        assert len(sample.choices) == 4 and sample.choices[LETTERS.index(sample.gold)] == str(count)
        numbers = [int(choice) for choice in sample.choices]
        assert len(set(numbers)) == 4 and min(numbers) >= 0 and max(abs(number - count) for number in numbers) <= 3
    # a count of 0 leaves exactly 1, 2, 3 as distractors
    assert sorted(first[3].choices) == ["0", "1", "2", "3"]


def test_option_order_depends_on_the_key_not_on_the_process():
    golds = {count_options(3, f"key-{index}")[1] for index in range(40)}
    assert len(golds) > 1  # the true count is not always at the same letter
    assert count_options(5, "pointQA_twice-1") == count_options(5, "pointQA_twice-1")


def test_visual_variant_draws_a_red_outline_and_plain_does_not(vip_data):
    visual = load("pointqa-visual-obj", vip_data)
    plain = load("pointqa-plain-obj", vip_data)
    small_visual, small_plain = visual[0].load_image(), plain[0].load_image()
    assert small_visual.size == small_plain.size == (64, 48)
    # 64 px wide: max(int(3 * 64 / 336), 1) = 1 px line on the box edge, red at alpha 128 over grey
    for point in [(10, 8), (10, 18), (30, 18), (20, 28), (20, 8)]:
        red, green, blue = small_visual.getpixel(point)
        assert red - green > 100 and red - blue > 100, point
        assert max(abs(a - b) for a, b in zip(small_plain.getpixel(point), GREY)) <= 2
    for point in [(11, 18), (20, 18), (9, 18), (5, 5)]:  # inside and outside the outline: untouched
        assert max(abs(a - b) for a, b in zip(small_visual.getpixel(point), GREY)) <= 2, point
    # 700 px wide: int(3 * 700 / 336) = 6 px, drawn inward from the box edge at x = 100
    large = visual[1].load_image()
    assert [large.getpixel((100 + offset, 150)) for offset in range(8)] == [(192, 64, 64)] * 6 + [GREY] * 2
    assert plain[1].load_image().getpixel((100, 150)) == GREY


def test_shikra_json_lines_with_a_bad_line(tmp_path):
    write_images(tmp_path)
    lines = [
        json.dumps(
            {
                "file_path": "VG_100K/2.png",
                "bbox": [100, 50, 400, 300],
                "point": [250, 175],
                "obj_question": "How many horses are there?",
                "super_question": "How many of these beings are there?",
                "general_question": "How many of these are there?",
                "answer": "4",
            }
        ),
        "{not json",
        "",
        json.dumps({"file_path": "VG_100K/1.jpg", "bbox": [0, 0, 10, 10], "obj_question": "How many cups are there?", "general_question": "x"}),
    ]
    (tmp_path / "pointQA_twice_test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "pointQA_twice_val.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    (tmp_path / "v7w-test.json").write_text("[]", encoding="utf-8")  # another benchmark's file beside it (as on the hub)
    samples = load("pointqa-plain-obj", tmp_path, "test")
    assert [sample.key for sample in samples] == ["1", "2", "4"]
    assert samples[0].question == "How many horses are there?" and samples[0].boxes == ((100.0, 50.0, 400.0, 300.0),)
    assert samples[1].error.startswith("line 2: not JSON")
    assert samples[2].error == "line 4: no answer (expected one of answer, Ans, ans, count)"
    assert [sample.key for sample in load("pointqa-plain-obj", tmp_path, "val")] == ["1"]


def release_entry(image_id: str, obj: str, answer: str, obj_type: str) -> dict:
    """An entry of looktwiceqa_dataset.json with the fields its README lists (Img_id ... Supercategory)."""
    return {
        "Img_id": image_id,
        "Obj_question": obj,
        "Super_question": "How many of these animals are there?",
        "General_question": "How many of these are there?",
        "Ans": answer,
        "BBox": {"object_id": 7, "x": 4, "y": 6, "w": 10, "h": 12, "names": [obj_type[:-1]], "synsets": []},
        "Point": {"x": 9, "y": 12, "ans": answer},
        "Obj_type": obj_type,
        "Supercategory": "animal",
    }


def write_release(root: Path, as_mapping: bool) -> Path:
    """The first release as its README describes it: the dataset file and the split lists of image ids."""
    (root / "VG_100K_2").mkdir(parents=True)
    for image_id, size in (("2414753", (80, 60)), ("2410576", (90, 70)), ("150444", (50, 40))):
        Image.new("RGB", size, GREY).save(root / "VG_100K_2" / f"{image_id}.jpg")
    entries = [
        release_entry("2414753", "How many dogs are there?", "2", "dogs"),
        release_entry("2410576", "How many cats are there?", "5", "cats"),
        release_entry("2414753", "How many birds are there?", "3", "birds"),
        release_entry("150444", "How many cows are there?", "4", "cows"),
    ]
    if as_mapping:
        mapping: dict[str, list] = {}
        for entry in entries:
            mapping.setdefault(entry["Img_id"], []).append(entry)
        (root / "looktwiceqa_dataset.json").write_text(json.dumps(mapping), encoding="utf-8")
    else:
        write_json_array(root / "looktwiceqa_dataset.json", entries)
    for split, ids in (("train", ["150444"]), ("val", ["2410576"]), ("test", ["2414753"])):
        (root / f"looktwiceqa_{split}_imgs.json").write_text(json.dumps(ids), encoding="utf-8")
    return root


@pytest.mark.parametrize("as_mapping", [False, True])
def test_first_release_splits_come_from_the_image_id_lists(tmp_path, as_mapping):
    root = write_release(tmp_path, as_mapping)
    test = load("pointqa-plain-general", root, "test")
    assert [(sample.key, sample.question, sample.boxes, sample.category) for sample in test] == [
        ("2414753-1", "How many of these are there?", ((4.0, 6.0, 14.0, 18.0),), "dogs"),
        ("2414753-2", "How many of these are there?", ((4.0, 6.0, 14.0, 18.0),), "birds"),
    ]
    assert [sample.choices[LETTERS.index(sample.gold)] for sample in test] == ["2", "3"]
    assert test[0].load_image().size == (80, 60)
    assert [sample.question for sample in load("pointqa-plain-obj", root, "test")] == ["How many dogs are there?", "How many birds are there?"]
    assert [sample.question for sample in load("pointqa-plain-super", root, "test")] == ["How many of these animals are there?"] * 2
    assert [(sample.key, sample.question) for sample in load("pointqa-plain-obj", root, "val")] == [("2410576-1", "How many cats are there?")]
    assert [sample.key for sample in load("pointqa-plain-obj", root / "looktwiceqa_dataset.json", "train")] == ["150444-1"]
    (root / "looktwiceqa_val_imgs.json").unlink()
    with pytest.raises(BenchmarkError, match="looktwiceqa_val_imgs.json is missing"):
        load("pointqa-plain-obj", root, "val")


def test_generation_script_names_pt_question_is_the_general_question(tmp_path):
    """create_looktwice_initial.py writes img_question (the object question) and pt_question (the object replaced by 'of these')."""
    (tmp_path / "VG_100K_2").mkdir()
    Image.new("RGB", (80, 60), GREY).save(tmp_path / "VG_100K_2" / "2414753.jpg")
    entry = {
        "id": 2414753,
        "img_question": "How many dogs are there?",
        "pt_question": "How many of these are there?",
        "ans": "2",
        "qtype": "howmany",
        "point": {"x": 9, "y": 12, "ans": "2"},
        "obj_type": "dogs",
        "bbox": {"object_id": 7, "x": 4, "y": 6, "w": 10, "h": 12, "names": ["dog"], "synsets": ["dog.n.01"]},
    }
    (tmp_path / "looktwice.json").write_text(json.dumps({"2414753": [entry]}), encoding="utf-8")
    general = load("pointqa-plain-general", tmp_path / "looktwice.json", "test")
    assert [(sample.key, sample.question, sample.category) for sample in general] == [("2414753-1", "How many of these are there?", "dogs")]
    assert load("pointqa-plain-obj", tmp_path / "looktwice.json")[0].question == "How many dogs are there?"
    assert load("pointqa-plain-super", tmp_path / "looktwice.json")[0].error.endswith("no super question (expected one of super_question, Super_question, supercategory_question)")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("this is not json", r"line 1, column 1: not valid JSON .*expected a JSON array"),
        ("42", r"line 1: the top level is a JSON int; expected a JSON array"),
        ('["2414753", "2410576"]', r"entry 1 \(line 1\): not a JSON object; expected PointQA entries"),
        ("", r"the file is empty"),
    ],
)
def test_file_not_in_the_format_names_file_and_place(tmp_path, content, expected):
    path = tmp_path / "pointQA_twice_test.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BenchmarkError, match=expected) as caught:
        load("pointqa-plain-obj", path)
    assert str(path) in str(caught.value)


def test_all_json_lines_broken_is_a_format_error(tmp_path):
    path = tmp_path / "pointQA_twice_test.jsonl"
    path.write_text("{broken\n{also broken\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"line 1, column 2: not valid JSON .*one PointQA JSON object per line"):
        load("pointqa-plain-obj", path)


def test_repeated_ids_are_error_rows_and_ambiguous_folders_are_refused(tmp_path):
    write_images(tmp_path)
    write_json_array(tmp_path / "a.json", [VIP_ENTRIES[0], VIP_ENTRIES[0]])
    samples = load("pointqa-plain-obj", tmp_path / "a.json")
    assert [(sample.key, sample.error) for sample in samples] == [("pointQA_twice-1", None), ("pointQA_twice-1#2", "key pointQA_twice-1 repeats an earlier item's key")]
    write_json_array(tmp_path / "b.json", VIP_ENTRIES[:1])
    with pytest.raises(BenchmarkError, match=r"expected one PointQA .json / .jsonl file.*found a.json, b.json"):
        load("pointqa-plain-obj", tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        load("pointqa-plain-obj", tmp_path / "nowhere")
