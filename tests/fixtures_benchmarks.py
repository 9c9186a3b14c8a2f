"""Small benchmark files in the public formats, written by hand for the loader tests.

Images are made with PIL in the modes real benchmark images come in (RGB, grayscale ``L``, ``RGBA``,
palette ``P``, CMYK JPEG), each with its own size so a test can tell which image a sample loaded.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image_bytes(mode: str, size: tuple[int, int], format: str) -> bytes:
    """An image of ``mode`` and ``size`` encoded as ``format``, filled with seeded noise."""
    rgb = Image.frombytes("RGB", size, random.Random(size[0] * 1000 + size[1]).randbytes(size[0] * size[1] * 3))
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(colors=16)
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    return image_bytes(mode, size, "JPEG")


def png(size: tuple[int, int], mode: str) -> bytes:
    return image_bytes(mode, size, "PNG")


def truncated_jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    data = jpeg(size)
    return data[: len(data) // 2]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_images(folder: Path, images: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)


def json_line(item: dict[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False)


# ---------------------------------------------------------------- POPE

POPE_QUESTION = "Is there a snowboard in the image?"
POPE_FRENCH = "Y a-t-il un éléphant dans l’image ?"


def pope_folder(root: Path) -> Path:
    """The three question files (JSON lines named .json) with the COCO images in ``val2014/``.

    coco_pope_adversarial.json, by line: 1 good (RGB 32×24), 2 good non-ASCII (grayscale 20×30),
    3 missing image, 4 truncated image, 5 bad label, 6 blank, 7 no question_id, 8 repeats id 1.
    """
    write_images(
        root / "val2014",
        {
            "COCO_val2014_000000000001.jpg": jpeg((32, 24)),
            "COCO_val2014_000000000002.jpg": jpeg((20, 30), "L"),
            "COCO_val2014_000000000004.jpg": truncated_jpeg(),
            "COCO_val2014_000000000005.jpg": jpeg((18, 18), "CMYK"),
            "COCO_val2014_000000000006.png": png((26, 14), "RGBA"),
        },
    )
    write_lines(
        root / "coco_pope_adversarial.json",
        [
            json_line({"question_id": 1, "image": "COCO_val2014_000000000001.jpg", "text": POPE_QUESTION, "label": "yes"}),
            json_line({"question_id": 2, "image": "COCO_val2014_000000000002.jpg", "text": POPE_FRENCH, "label": "No"}),
            json_line({"question_id": 3, "image": "COCO_val2014_000000000003.jpg", "text": "Is there a dog in the image?", "label": "no"}),
            json_line({"question_id": 4, "image": "COCO_val2014_000000000004.jpg", "text": "Is there a cup in the image?", "label": "yes"}),
            json_line({"question_id": 5, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat in the image?", "label": "maybe"}),
            "",
            json_line({"image": "COCO_val2014_000000000001.jpg", "text": "Is there a car in the image?", "label": "no"}),
            json_line({"question_id": 1, "image": "COCO_val2014_000000000002.jpg", "text": "Is there a bus in the image?", "label": "no"}),
        ],
    )
    write_lines(
        root / "coco_pope_popular.json", [json_line({"question_id": 1, "image": "COCO_val2014_000000000005.jpg", "text": "Is there a person in the image?", "label": "yes"})]
    )
    write_lines(root / "coco_pope_random.json", [json_line({"question_id": 1, "image": "COCO_val2014_000000000006.png", "text": "Is there a kite in the image?", "label": "no"})])
    return root


def pope_seem_folder(root: Path) -> Path:
    """POPE's A-OKVQA and GQA files as published: pretty-printed JSON arrays (4-space indent), ``*_pope_seem_{setting}.json``.

    A-OKVQA questions name COCO images (in ``val2014/``), GQA questions Visual Genome ids (in ``images/``).
    aokvqa adversarial: 1 yes (RGB 12×10), 2 no (same image); popular / random: one each. gqa
    adversarial: 1 yes (RGB 14×9), 2 missing image; popular / random: one each.
    """
    write_images(root / "val2014", {"COCO_val2014_000000461751.jpg": jpeg((12, 10))})
    write_images(root / "images", {"2405722.jpg": jpeg((14, 9))})

    def question(question_id: int, image: str, text: str, label: str) -> dict[str, Any]:
        return {"question_id": question_id, "image": image, "text": text, "label": label}

    coco, gqa = "COCO_val2014_000000461751.jpg", "2405722.jpg"
    files = {
        "aokvqa_pope_seem_adversarial.json": [question(1, coco, "Is there a building in the image?", "yes"), question(2, coco, "Is there a sky in the image?", "no")],
        "aokvqa_pope_seem_popular.json": [question(1, coco, "Is there a person in the image?", "yes")],
        "aokvqa_pope_seem_random.json": [question(1, coco, "Is there a kite in the image?", "no")],
        "gqa_pope_seem_adversarial.json": [question(1, gqa, "Is there a bird in the image?", "yes"), question(2, "2400000.jpg", "Is there a wall in the image?", "no")],
        "gqa_pope_seem_popular.json": [question(1, gqa, "Is there a tree in the image?", "yes")],
        "gqa_pope_seem_random.json": [question(1, gqa, "Is there a boat in the image?", "no")],
    }
    for name, items in files.items():
        (root / name).write_text(json.dumps(items, indent=4), encoding="utf-8")
    return root


POPE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("image_source", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("category", pa.string()),
    ]
)


def pope_parquet_folder(root: Path) -> Path:
    """lmms-lab/POPE style: ``data/test-0000{0,1}-of-00002.parquet``; the second stores images as plain bytes.

    File 0: adversarial 1 (palette PNG 22×11), popular 1 (RGB 15×25). File 1: adversarial 2
    (truncated), random 1 (CMYK 10×40).
    """
    first = {
        "id": ["0", "1"],
        "question_id": ["1", "1"],
        "question": [POPE_QUESTION, "Is there a person in the image?"],
        "answer": ["yes", "no"],
        "image_source": ["COCO_val2014_000000000001", "COCO_val2014_000000000002"],
        "image": [{"bytes": png((22, 11), "P"), "path": "a.png"}, {"bytes": jpeg((15, 25)), "path": "b.jpg"}],
        "category": ["adversarial", "popular"],
    }
    second = {
        "id": ["2", "3"],
        "question_id": ["2", "1"],
        "question": [POPE_FRENCH, "Is there a kite in the image?"],
        "answer": ["No", "yes"],
        "image_source": ["COCO_val2014_000000000003", "COCO_val2014_000000000004"],
        "image": [truncated_jpeg(), jpeg((10, 40), "CMYK")],
        "category": ["adversarial", "random"],
    }
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(first, schema=POPE_SCHEMA), root / "data" / "test-00000-of-00002.parquet")
    second_schema = POPE_SCHEMA.set(POPE_SCHEMA.get_field_index("image"), pa.field("image", pa.binary()))
    pq.write_table(pa.table(second, schema=second_schema), root / "data" / "test-00001-of-00002.parquet")
    return root


# ---------------------------------------------------------------- MMBench

MMBENCH_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category", "comment", "split"]
MMBENCH_HINT = 'The picture was taken at noon.\nIt is "sunny".'
MMBENCH_FRENCH = "Quel est l’objet au centre ?"


def mmbench_rows() -> list[dict[str, str]]:
    """Rows of an MMBench dev TSV; the comments give the line each row starts on.

    Line 3-4 (index 1) has a two-line quoted hint; index 1000000 is the file's circular copy of 0.
    """
    red_blue = b64(jpeg((40, 30)))

    def row(index: str, question: str, options: tuple[str, ...], answer: str, image: str, hint: str = "", category: str = "attribute_recognition") -> dict[str, str]:
        cells = dict(zip(("A", "B", "C", "D"), options))
        return {
            "index": index,
            "question": question,
            "hint": hint,
            **cells,
            "answer": answer,
            "category": category,
            "image": image,
            "source": "MMBench",
            "l2-category": "fine-grained perception",
            "comment": "",
            "split": "dev",
        }

    return [
        row("0", "Which colour dominates this picture?", ("red", "green", "blue", "yellow"), "C", red_blue),  # line 2
        row("1", MMBENCH_FRENCH, ("a cat", "a dog", "", ""), "B", b64(png((16, 16), "L")), hint=MMBENCH_HINT, category="object_localization"),  # 3-4
        row("2", "How many apples are there?", ("one", "two", "", "four"), "D", b64(jpeg((24, 12), "CMYK")), hint="nan"),  # 5: option gap
        row("3", "Is the square larger than the circle?", ("yes", "no", "nan", "NaN"), "A", "0", hint="NaN"),  # 6: image of row 0
        row("4", "Which shape is on the left?", ("square", "circle", "", ""), "D", red_blue),  # 7: answer not an option
        row("5", "  ", ("square", "circle", "", ""), "A", red_blue),  # 8: empty question
        row("6", "What is broken here?", ("the image", "nothing", "", ""), "A", b64(truncated_jpeg())),  # 9
        row("1000000", "Which colour dominates this picture?", ("green", "blue", "yellow", "red"), "B", "0"),  # 10: copy of 0
        row("7", "Where is the dot?", ("left", "right", "", ""), "B", "99"),  # 11: refers to a missing row
    ]


def write_tsv(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    """Tab-separated like pandas' ``to_csv(sep="\\t")``: minimal quoting, '\\n' line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(name, "") for name in header])
    return path


# ---------------------------------------------------------------- SEED-Bench

SEED_RUSSIAN = "Что изображено на картинке?"


def seed_folder(root: Path) -> Path:
    """SEED-Bench.json (one question per line, so lines are known) and SEED-Bench-image/.

    Questions, by line: 2 good (data_id with suffix, RGB 30×20), 3 video (skipped), 4 good non-ASCII
    (data_id without suffix → a palette PNG 12×34), 5 missing image, 6 answer E (error).
    """
    write_images(root / "SEED-Bench-image", {"1454426_2591111986.jpg": jpeg((30, 20)), "img_without_ext.png": png((12, 34), "P")})

    def question(question_id: str, text: str, answer: str, data_id: str, data_type: str = "image", type_id: int = 5) -> str:
        return json_line(
            {
                "answer": answer,
                "choice_a": "One",
                "choice_b": "Two",
                "choice_c": "Three",
                "choice_d": "Four",
                "data_id": data_id,
                "data_type": data_type,
                "question": text,
                "question_id": question_id,
                "question_type_id": type_id,
            }  # SEED-Bench v1's keys
        )

    lines = [
        '{"questions": [',
        question("101669", "How many towels are in the image?", "B", "1454426_2591111986.jpg") + ",",
        question("v100", "What happens next?", "A", "v100.mp4", data_type="video", type_id=11) + ",",
        question("2", SEED_RUSSIAN, "D", "img_without_ext", type_id=1) + ",",
        question("3", "How many cars are there?", "A", "missing.jpg") + ",",
        question("4", "How many dogs are there?", "E", "1454426_2591111986.jpg"),
        '], "question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4, "Instances Counting": 5}}',
    ]
    write_lines(root / "SEED-Bench.json", lines)
    return root


SEED_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SEED_TEXT_COLUMNS = ("answer", "choice_a", "choice_b", "choice_c", "choice_d", "data_id", "data_type", "question", "question_id")


def seed_parquet(path: Path) -> Path:
    """lmms-lab/SEED-Bench style: ``image`` is a list of images; rows: image (CMYK 14×9), video, image with an empty list."""
    table = pa.table(
        {
            "answer": ["C", "A", "B"],
            "choice_a": ["red", "walk", "yes"],
            "choice_b": ["green", "run", "no"],
            "choice_c": ["blue", "sit", "maybe"],
            "choice_d": ["black", "jump", "never"],
            "data_id": ["1_2.jpg", "v1.mp4", "3_4.jpg"],
            "data_type": ["image", "video", "image"],
            "question": ["What colour is the car?", "What will he do?", "Is it raining?"],
            "question_id": ["11", "v1", "12"],
            "question_type_id": [3, 10, 8],
            "image": [[{"bytes": jpeg((14, 9), "CMYK"), "path": "1_2.jpg"}], [{"bytes": jpeg((8, 8)), "path": "f1.jpg"}] * 2, []],
        },
        schema=pa.schema([*(pa.field(name, pa.string()) for name in SEED_TEXT_COLUMNS), pa.field("question_type_id", pa.int64()), pa.field("image", pa.list_(SEED_IMAGE))]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------- Q-Bench

QBENCH_RUSSIAN = "Какое искажение есть на этом изображении?"


def qbench_folder(root: Path) -> Path:
    """llvisionqa_dev.json / llvisionqa_test.json (one item per line) and images/.

    Keys as in the authors' files (``type``, ``concern``, ...; item 3 with the hub export's
    ``question_type`` / ``question_concern``). Dev items, by line: 2 how / in-context other (RGB 28×21), 3 yes-or-no / distortion (RGBA 9×19),
    4 what / other low-level, non-ASCII (grayscale 33×11), 5 one candidate (error), 6 answer not a
    candidate (error), 7 missing image.
    """
    images = {"00079.jpg": jpeg((28, 21)), "00080.png": png((9, 19), "RGBA"), "00081.jpg": jpeg((33, 11), "L"), "00090.jpg": jpeg((5, 7))}
    write_images(root / "images", images)

    def item(img_path: str, question: str, question_type: int, concern: int, candidates: list[str], answer: str | None) -> str:
        # the authors' keys in the authors' order; the second item uses the hub export's names for the two codes
        names = ("question_type", "question_concern") if img_path == "00080.png" else ("type", "concern")
        fields = {names[0]: question_type, names[1]: concern, "question": question, "img_path": img_path, "candidates": candidates}
        return json_line(fields if answer is None else {**fields, "correct_ans": answer})

    dev = [
        item("00079.jpg", "How is the lighting of this image?", 2, 3, ["High", "Low", "Medium"], "Medium"),
        item("00080.png", "Is this image blurry?", 0, 0, ["Yes", "No"], "No"),
        item("00081.jpg", QBENCH_RUSSIAN, 1, 1, ["Шум", "Размытие", "Пересвет", "Нет"], "Шум"),
        item("00082.jpg", "Is this image clear?", 0, 0, ["Yes"], "Yes"),
        item("00083.jpg", "How is the noise?", 2, 0, ["Heavy", "Slight"], "None"),
        item("00084.jpg", "What is the colour tone?", 1, 2, ["Warm", "Cold"], "Warm"),
    ]
    test = [item("00090.jpg", "How is the focus of this image?", 2, 0, ["Sharp", "Soft"], None)]
    write_lines(root / "llvisionqa_dev.json", ["[", ",\n".join(dev), "]"])
    write_lines(root / "llvisionqa_test.json", ["[", *test, "]"])
    return root


# ---------------------------------------------------------------- AMBER

# a few of relation.json's entries as the authors wrote them (4-space indent, one word a line)
AMBER_RELATION = {
    "sky": [],
    "grass": ["ground"],
    "road": ["path", "street", "ground"],
    "person": ["people", "individual", "man", "woman", "boy", "girl"],
    "cloud": [],
    "forest": ["tree", "leave", "bush"],
    "lake": ["water", "sea", "river"],
    "mountain": ["hill", "rock", "stone", "reef"],
    "sun": [],
    "bird": ["bill"],
    "dog": [],
    "flower": [],
    "ship": ["boat", "vessel", "sailing", "vehicle"],
    "bin": ["can", "bucket"],
    "dustbin": ["bin"],
}
AMBER_SAFE_WORDS = ["orange", "snack", "line", "camera", "light", "shoe", "sign", "range", "individual"]
AMBER_ID1_TRUTH = ["sky", "forest", "grass", "person", "lake", "mountain", "road"]  # the real annotation of id 1
AMBER_ID1_HALLU = ["cloud", "sun", "bird", "dog", "flower"]


def amber_folder(root: Path) -> Path:
    """AMBER's ``data/`` layout (annotations.json, relation.json, safe_words.txt, query/*.json as pretty-printed
    JSON, safe_words.txt without a final newline) with the images in ``image/``.

    Generative queries, by item: 1 (RGB 30×20), 2 (grayscale 16×12; truth repeats ship), 3 missing image,
    4 annotated as discriminative, 5 no annotation, 6 truth a string, a query without text (id 13), a bare
    string, id 1 again. Annotations are joined by id (there is no id 5, so from id 6 on an annotation's place
    is not its id - 1); id 7 has no query. Existence queries: 8 no (AMBER_1), 9 yes (AMBER_2), 10 truth
    "maybe", 11 annotated as generative, 12 annotated twice.
    """
    write_images(root / "image", {"AMBER_1.jpg": jpeg((30, 20)), "AMBER_2.jpg": jpeg((16, 12), "L"), "AMBER_4.jpg": jpeg((8, 8))})
    data = root / "data"
    generative = [
        {"id": 1, "type": "generative", "truth": AMBER_ID1_TRUTH, "hallu": AMBER_ID1_HALLU},
        {"id": 2, "type": "generative", "truth": ["ship", "ship", "lake"], "hallu": ["bird"]},
        {"id": 3, "type": "generative", "truth": ["person"], "hallu": ["dog"]},
        {"id": 4, "type": "discriminative-hallucination", "truth": "no"},
        {"id": 6, "type": "generative", "truth": "sky", "hallu": []},
        {"id": 7, "type": "generative", "truth": ["bin"], "hallu": ["dustbin"]},
        {"id": 8, "type": "discriminative-hallucination", "truth": "no"},
        {"id": 9, "type": "discriminative-hallucination", "truth": "yes"},
        {"id": 10, "type": "discriminative-hallucination", "truth": "maybe"},
        {"id": 11, "type": "generative", "truth": ["sky"], "hallu": ["sun"]},
        {"id": 12, "type": "discriminative-hallucination", "truth": "no"},
        {"id": 12, "type": "discriminative-hallucination", "truth": "yes"},
    ]
    write_json(data / "annotations.json", generative)
    write_json(data / "relation.json", AMBER_RELATION)
    data.joinpath("safe_words.txt").write_text("\n".join(AMBER_SAFE_WORDS), encoding="utf-8")

    def query(number: int, text: str = "Describe this image.", image: int | None = None) -> dict[str, Any]:
        return {"id": number, "image": f"AMBER_{image or number}.jpg", "query": text}

    queries = [query(number) for number in range(1, 7)]
    queries += [{"id": 13, "image": "AMBER_1.jpg", "query": ""}, "Describe this image.", query(1, image=2)]
    write_json(data / "query" / "query_generative.json", queries)
    existence = [query(8, "Is there a cloud in this image?", 1), query(9, "Is there an apple in this image?", 2)]
    existence += [query(10, "Is there a sun in this image?", 1), query(11, "Is there a dog in this image?", 1), query(12, "Are there fish?", 2)]
    write_json(data / "query" / "query_discriminative-existence.json", existence)
    return root


def write_json(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=4, ensure_ascii=False), encoding="utf-8")
    return path
