"""The head-ranking files of Retrieval_Head / SparseMM (JSON) and DuoAttention (TSV), read and written on hand-made
text: every expectation comes from the tools' own readers, written here (``json`` with a dict, numpy's ``mean``,
numpy's ``loadtxt`` on a file), never from attnwh's parsers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnwh.core.errors import UsageError
from attnwh.warehouse.head_files import is_duo_config, parse_duo_tsv, parse_retrieval_json, write_heads

SHAPE = (3, 4, 2)  # layers, query heads, key-value heads
KEYS = [f"{layer}-{head}" for layer in range(3) for head in range(4)]


def json_text(pairs: list[tuple[str, str]]) -> str:
    """A JSON object written pair by pair (a dict cannot hold a key twice)."""
    return "{" + ", ".join(f"{json.dumps(key)}: {value}" for key, value in pairs) + "}"


def every_head(replace: dict[str, tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Every head of the 3 × 4 model with a one-value list, in order; ``replace`` maps a key to the (key, value) written instead."""
    pairs = [(key, f"[{index / 10}]") for index, key in enumerate(KEYS)]
    return [(replace or {}).get(key, (key, value)) for key, value in pairs]


def refusal(parse, text: str) -> str:
    with pytest.raises(UsageError) as caught:
        parse(text, "ranking.json", SHAPE, "tiny")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("ranking.json"), message
    return message


@pytest.mark.parametrize(
    "extra, message",
    [
        (("0-0", "[9.0]"), "head 0-0 is given twice (keys '0-0' and '0-0')"),
        (("00-0", "[9.0]"), "head 0-0 is given twice (keys '0-0' and '00-0')"),
        (("2-03", "[9.0]"), "head 2-3 is given twice (keys '2-3' and '2-03')"),
    ],
)
def test_a_head_named_twice_is_refused_rather_than_the_later_kept(extra, message):
    text = json_text([*every_head(), extra])
    assert len({tuple(int(part) for part in key.split("-")) for key in json.loads(text)}) == 12  # as heads, the keys pass for the model's 12
    assert message in refusal(parse_retrieval_json, text)


def test_a_key_with_leading_zeros_alone_is_the_head_it_names():
    """Retrieval_Head reads a key as ``int`` of each part: "00-1" is head 0-1."""
    scores = parse_retrieval_json(json_text(every_head({"0-1": ("00-1", "[0.1]")})), "ranking.json", SHAPE, "tiny")
    assert scores[(0, 1)] == 0.1


@pytest.mark.parametrize(
    "replace, message",
    [
        ({"2-3": ("2-³", "[0.5]")}, "key '2-³' is not \"layer-head\""),  # str.isdigit holds, int() fails
        ({"2-3": ("٢-٣", "[0.5]")}, "key '٢-٣' is not \"layer-head\""),  # int() reads it as 2-3
        ({"2-3": ("2-3", "[" + "9" * 400 + "]")}, "head 2-3 needs a non-empty list of finite numbers"),  # beyond a float
        ({"2-3": ("2-3", "[1e308, 1e308]")}, "head 2-3: the mean of its scores is not a finite number"),  # finite values, infinite mean
        ({"2-3": ("2-3", "[true]")}, "head 2-3 needs a non-empty list of finite numbers"),
        ({"2-3": ("2-3", "{}")}, "head 2-3 needs a non-empty list of finite numbers"),
        ({"2-3": ("2-3", "[NaN]")}, "head 2-3 needs a non-empty list of finite numbers"),
    ],
)
def test_bad_keys_and_values_give_one_line(replace, message):
    assert message in refusal(parse_retrieval_json, json_text(every_head(replace)))


def test_json_nested_beyond_the_recursion_limit_is_a_bad_file():
    assert "nested too deeply" in refusal(parse_retrieval_json, "[" * 100_000)
    assert "nested too deeply" in refusal(parse_retrieval_json, '{"0-0": ' * 100_000)


def test_a_heads_score_is_numpys_mean_of_its_list():
    """Nine values whose ``sum / len`` is one ulp above numpy's (pairwise) mean: the tools' ranking uses numpy's."""
    values = [0.2, 1.1, 0.1, 0.3, 0.1, 0.7, 0.7, 0.7, 0.7]
    assert sum(values) / len(values) != np.mean(values)
    scores = parse_retrieval_json(json_text(every_head({"1-2": ("1-2", json.dumps(values))})), "ranking.json", SHAPE, "tiny")
    assert scores[(1, 2)] == float(np.mean(values))


head_key = st.one_of(st.sampled_from(KEYS), st.from_regex(r"\A[0-9]{1,3}-[0-9]{1,3}\Z"), st.text(alphabet=st.characters(categories=["Nd", "No", "Pd"]), max_size=5))
score = st.one_of(st.floats(), st.integers(min_value=-(10**400), max_value=10**400), st.booleans(), st.none(), st.text(max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(head_key, st.lists(score, max_size=3)), max_size=14))
def test_generated_json_parses_as_numpy_reads_it_or_gives_one_line(pairs):
    text = json_text([(key, json.dumps(values)) for key, values in pairs])
    try:
        scores = parse_retrieval_json(text, "ranking.json", SHAPE, "tiny")
    except UsageError as exc:
        assert "\n" not in str(exc) and "ranking.json" in str(exc)
    else:  # what it accepts: every head once, each numpy's mean of its list
        heads = [tuple(int(part) for part in key.split("-")) for key, _ in pairs]  # Retrieval_Head's reading of a key
        assert len(set(heads)) == len(heads) == 12
        assert scores == {head: float(np.mean(values)) for head, (_, values) in zip(heads, pairs)}


def loadtxt(text: str, tmp_path) -> np.ndarray:
    """DuoAttention's reader (``load_attn_pattern``): numpy's loadtxt of the file, tab-separated, clipped to [0, 1]."""
    path = tmp_path / "full_attention_heads.tsv"
    path.write_text(text, encoding="utf-8", newline="")
    return np.clip(np.loadtxt(path, dtype=float, delimiter="\t", ndmin=2), 0, 1)


@pytest.mark.parametrize(
    "text",
    [
        "# layers x key-value heads\n0.1\t0.9\n0.5\t0.3\n1\t0\n",  # a comment line loadtxt skips
        "0.1\t0.9 # first layer\n0.5\t0.3\n\n1\t0\n",  # a comment after the values, an empty line
        "0.1\t0.9\r\n0.5\t0.3\r\n1\t0\r\n",
        "1e-1\t+.9\n5E-1\t0.3\n1.\t-0\n",
    ],
)
def test_a_duo_tsv_is_read_as_numpys_loadtxt_reads_it(text, tmp_path):
    scores, _ = parse_duo_tsv(text, "duo.tsv", SHAPE, "tiny")
    expected = loadtxt(text, tmp_path)
    assert scores == {(layer, head): expected[layer, head // 2] for layer in range(3) for head in range(4)}


@pytest.mark.parametrize("text", ["0.1\t0.9\n0.5\t0.3\n1\t0_5\n", "0.1\t0.9\n0.5\t0.3\n1\t\n", "0.1\t0.9\n   \n0.5\t0.3\n1\t0\n", "\ufeff0.1\t0.9\n0.5\t0.3\n1\t0\n"])
def test_what_numpys_loadtxt_refuses_a_duo_tsv_refuses_in_one_line(text, tmp_path):
    with pytest.raises(ValueError):
        loadtxt(text, tmp_path)
    assert "not tab-separated numbers" in refusal(parse_duo_tsv, text)


@pytest.mark.filterwarnings("ignore:loadtxt. input contained no data")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="0123456789.-+e_# \t\n\rnaif", max_size=40))
def test_generated_duo_tsvs_read_as_loadtxt_reads_them(text, tmp_path):
    try:
        expected = loadtxt(text, tmp_path)
    except ValueError:
        expected = None
    try:
        scores, _ = parse_duo_tsv(text, "duo.tsv", SHAPE, "tiny")
    except UsageError as exc:
        assert "\n" not in str(exc) and "duo.tsv" in str(exc)
        assert expected is None or expected.shape != (3, 2) or not np.isfinite(expected).all()
    else:
        assert expected is not None and expected.shape == (3, 2)
        assert scores == {(layer, head): expected[layer, head // 2] for layer in range(3) for head in range(4)}


def one_value_rows(scores: dict[tuple[int, int], float], n_kv_heads: int = 2) -> list[dict]:
    return [
        {"layer": layer, "head": head, "scores": [value], "mean_score": value, "n_layers": 2, "n_heads": 2, "n_kv_heads": n_kv_heads} for (layer, head), value in scores.items()
    ]


def test_a_duo_tsv_export_keeps_heads_that_differ_below_a_millionth_of_the_range_apart(tmp_path):
    """One outlier head (50) and three ordinary ones: rounded to 6 decimals after min-max scaling they all read 0."""
    means = {(0, 0): 50.0, (0, 1): 1e-5, (1, 0): 3e-5, (1, 1): 2e-5}
    path = tmp_path / "full_attention_heads.tsv"
    path.write_text(write_heads(one_value_rows(means), "duo-tsv"))
    read = np.loadtxt(path, dtype=float, delimiter="\t")  # DuoAttention's reader
    by_file = sorted(means, key=lambda head: -read[head])
    assert by_file == sorted(means, key=lambda head: -means[head]) == [(0, 0), (1, 0), (1, 1), (0, 1)]


def test_a_retrieval_json_export_writes_negative_scores_as_0_and_says_so():
    """SparseMM gives each head ``head_score / sum`` of the cache: a negative score would be a negative budget."""
    scores = {(0, 0): 0.8, (0, 1): -0.3, (1, 0): 0.1, (1, 1): -0.05}
    told: list[list[str]] = []
    content = json.loads(write_heads(one_value_rows(scores), "retrieval-json", told.append))
    means = np.array([np.mean(values) for values in content.values()])  # SparseMM: key order, each list's mean
    assert (means / means.sum()).tolist() == pytest.approx([0.8 / 0.9, 0, 0.1 / 0.9, 0])
    assert len(told) == 1 and len(told[0]) == 1 and told[0][0].startswith("wrote 2 negative score(s) as 0")
    told.clear()
    write_heads(one_value_rows(scores), "duo-tsv", told.append)  # min-max scaled: nothing negative is written
    assert told == []


def test_a_config_json_is_duoattentions_when_it_holds_its_sink_and_recent_sizes():
    assert is_duo_config(json.dumps({"model_name": "x", "sink_size": 128, "recent_size": 256}))
    for text in ('{"model_type": "llava"}', '{"sink_size": 128}', '{"sink_size": "128", "recent_size": 256}', '{"sink_size": true, "recent_size": 256}', "[1]", "{", "[" * 100_000):
        assert not is_duo_config(text), text
