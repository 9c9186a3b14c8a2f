"""``attnwh attribute`` end to end on a tiny LLaVA, against transformers' own attention with each head's output
changed by a forward pre-hook on ``o_proj`` (never through attnwh's interventions): single-head ablation effects,
attribution patching against finite differences, a patterns run refitted with a closed-form ridge, and the run
taken by everything downstream (mask, heads export, ranking_agreement)."""

from __future__ import annotations

import html
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from attnwh.extract.attribution import METHODS, AttributeOptions, prepare_attribute, run_attribute
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.models import load_model
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.extract.sweep import SweepSamples
from attnwh.face.cli import app
from attnwh.face.workflows import mask_sweep
from attnwh.queries.library import data_test_failures, get_mart, open_session, run_mart
from attnwh.queries.rankings import export_heads, ranked_scores
from attnwh.reports.causal import strength
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from tests.reliability.harness import run_cli

BENCHMARK, LIMIT = "toy-shapes-choice", 3


def _options(model, **settings) -> AttributeOptions:
    return AttributeOptions(model=str(model), benchmark=BENCHMARK, limit=LIMIT, device="cpu", dtype="float32", command=["test"], **settings)


@pytest.fixture(scope="module")
def attributed(tmp_path_factory, tiny_mha):
    warehouse = tmp_path_factory.mktemp("attribute") / "wh"
    runs = {}
    for method, extra in (("single", {}), ("gradient", {}), ("patterns", {"patterns": 24, "bootstrap": 10, "p": 0.25})):
        runs[method] = run_attribute(warehouse, prepare_attribute(_options(tiny_mha, method=method, **extra)))
    return warehouse, runs


def _stock(model_path):
    """The sweep's setup, attnwh's loaded model and its one encoded batch (attnwh's data path), and the same weights
    in stock transformers (SDPA, float64) with their head size: what the references below run."""
    setup = prepare_attribute(_options(model_path, method="single"))
    loaded = load_model(setup.run.source, dtype=torch.float32, device=torch.device("cpu"))
    (batch,) = SweepSamples(loaded, setup.run, LIMIT).each_batch()
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float64, attn_implementation="sdpa").eval()
    text = model.config.text_config
    return setup, loaded, batch, model, text.hidden_size // text.num_attention_heads


@pytest.fixture(scope="module")
def reference(tiny_mha):
    """The sweep's encoded batch (attnwh's data path), stock SDPA attention in float64, and the gold option's log-probability
    with the heads' ``o_proj`` inputs scaled by a hook: ``target(scale)``, scale[layer, head] (1 = unchanged)."""
    setup, loaded, batch, model, head_dim = _stock(tiny_mha)
    text = model.config.text_config
    tokenizer = loaded.processor.tokenizer
    letters = []
    for letter in "ABCD":
        ids = {tokenizer.convert_tokens_to_ids(letter)} | {ids[0] for text_ in (letter, " " + letter) if len(ids := tokenizer.encode(text_, add_special_tokens=False)) == 1}
        letters.append(sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id))
    gold = [ord(item.sample.gold) - ord("A") for item in batch.items]
    scale = torch.ones(text.num_hidden_layers, text.num_attention_heads, dtype=torch.float64)

    def hook(layer):
        def pre(module, args):
            (hidden,) = args
            factors = scale[layer].to(hidden.dtype).repeat_interleave(head_dim)
            return (hidden * factors,)

        return pre

    for index, layer in enumerate(model.model.language_model.layers):
        layer.self_attn.o_proj.register_forward_pre_hook(hook(index))

    def target(new_scale: torch.Tensor) -> np.ndarray:
        scale.copy_(new_scale)
        with torch.inference_mode():
            inputs = {key: value.double() if value.is_floating_point() else value for key, value in batch.encoded.items()}
            log_probs = torch.log_softmax(model(**inputs).logits[:, -1], dim=-1)
        return np.array([float(torch.logsumexp(log_probs[row, letters[g]], dim=0)) for row, g in enumerate(gold)])

    return target, (text.num_hidden_layers, text.num_attention_heads)


def _scores(warehouse, run_id: str) -> dict[tuple[int, int], dict]:
    with open_session(warehouse) as session:
        return {(row["layer"], row["head"]): row for row in run_mart(session, "attribution_ranking", {"run_id": run_id}).to_pylist()}


def test_single_equals_ablation_by_an_o_proj_hook(attributed, reference):
    warehouse, runs = attributed
    target, (n_layers, n_heads) = reference
    base = target(torch.ones(n_layers, n_heads))
    scores = _scores(warehouse, runs["single"].run_id)
    for layer in range(n_layers):
        for head in range(n_heads):
            scale = torch.ones(n_layers, n_heads)
            scale[layer, head] = 0
            drops = base - target(scale)
            row = scores[(layer, head)]
            assert row["score"] == pytest.approx(drops.mean(), abs=2e-5)
            assert row["std_error"] == pytest.approx(drops.std(ddof=1) / np.sqrt(LIMIT), abs=2e-5)
    assert max(abs(row["score"]) for row in scores.values()) > 1e-3, "some head must matter"
    assert runs["single"].fit["n_conditions"] == n_layers * n_heads and runs["single"].fit["n_samples"] == LIMIT


def test_gradient_equals_finite_differences_of_the_hook(attributed, reference):
    """Attribution patching is the derivative at no ablation: a small step ε of each head's scale, through the
    hook, changes the target by ε × its score (the first-order estimate is exact in the limit)."""
    warehouse, runs = attributed
    target, (n_layers, n_heads) = reference
    scores, eps = _scores(warehouse, runs["gradient"].run_id), 1e-3
    for layer in range(n_layers):
        for head in range(n_heads):
            up, down = torch.ones(n_layers, n_heads), torch.ones(n_layers, n_heads)
            up[layer, head], down[layer, head] = 1 + eps, 1 - eps
            derivative = (target(up) - target(down)) / (2 * eps)
            assert scores[(layer, head)]["score"] == pytest.approx(derivative.mean(), abs=1e-4, rel=1e-3)


def test_patterns_fit_equals_a_closed_form_ridge_on_the_stored_targets(attributed, reference, tiny_mha):
    warehouse, runs = attributed
    target, (n_layers, n_heads) = reference
    result = runs["patterns"]
    run = open_warehouse(warehouse).find_run(result.run_id)
    targets = pq.read_table([str(path) for path in parts.table_files(run, "sweep_targets")]).to_pylist()
    conditions = pq.read_table([str(path) for path in parts.table_files(run, "sweep_conditions")]).to_pylist()
    by = {(row["condition_id"], row["sample_idx"]): row["gold_logprob"] for row in targets}
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    base = target(torch.ones(n_layers, n_heads))
    assert [by[(0, s)] for s in range(LIMIT)] == pytest.approx(base.tolist(), abs=2e-5)
    ablated = {c["condition_id"]: {(h["layer"], h["head"]) for h in c["heads"]} for c in conditions}
    for condition_id in (1, 2):  # two patterns through the hook
        scale = torch.tensor([[0.0 if (layer, head) in ablated[condition_id] else 1.0 for head in range(n_heads)] for layer in range(n_layers)])
        assert [by[(condition_id, s)] for s in range(LIMIT)] == pytest.approx(target(scale).tolist(), abs=2e-5)
    ids = sorted(ablated)[1:]
    x = np.array([[head in ablated[c] for head in heads] for c in ids], dtype=float)
    y = np.array([np.mean([by[(c, s)] - by[(0, s)] for s in range(LIMIT)]) for c in ids])
    xc, yc = x - x.mean(axis=0), y - y.mean()
    closed = np.linalg.solve(xc.T @ xc + result.fit["alpha"] * np.eye(len(heads)), xc.T @ yc)
    scores = _scores(warehouse, result.run_id)
    assert [scores[head]["score"] for head in heads] == pytest.approx((-closed).tolist(), abs=1e-8)
    assert all(row["ci_low"] <= row["ci_high"] for row in scores.values()) and result.fit["r2_heldout"] is not None
    again = run_attribute(warehouse, prepare_attribute(_options(tiny_mha, method="patterns", patterns=24, bootstrap=10, p=0.25)))
    assert again.run_id == result.run_id and again.conditions_written == 0 and again.fitted


def _stored(warehouse, run_id: str, column: str) -> tuple[dict, dict]:
    """The run's stored ``column`` per (condition, sample) and the heads each condition ablated, from its Parquet files."""
    run = open_warehouse(warehouse).find_run(run_id)
    targets = pq.read_table([str(path) for path in parts.table_files(run, "sweep_targets")]).to_pylist()
    conditions = pq.read_table([str(path) for path in parts.table_files(run, "sweep_conditions")]).to_pylist()
    return {(row["condition_id"], row["sample_idx"]): row[column] for row in targets}, {c["condition_id"]: {(h["layer"], h["head"]) for h in c["heads"]} for c in conditions}


def test_refit_fits_the_stored_targets_again_without_the_model(attributed, monkeypatch, tmp_path):
    """--refit: a patterns run refitted by plain least squares equals numpy's lstsq (with an intercept) on its stored
    targets; a single run refitted on the margin gives each head the mean drop of the stored margins; neither
    runs a sweep or loads a model; the same refit resumes; runs without targets are refused in one line."""
    from attnwh.core.errors import UsageError
    from attnwh.extract import attribution

    def never(*args, **kwargs):
        raise AssertionError("a refit runs no model")

    monkeypatch.setattr(attribution, "run_sweep", never)
    monkeypatch.setattr(attribution, "load_model", never)
    original, runs = attributed
    warehouse = shutil.copytree(original, tmp_path / "wh")  # the module's warehouse keeps its runs for the other tests
    heads = [(layer, head) for layer in range(3) for head in range(4)]
    by, ablated = _stored(warehouse, runs["patterns"].run_id, "gold_logprob")
    ids = sorted(ablated)[1:]
    x = np.column_stack([np.ones(len(ids)), np.array([[head in ablated[c] for head in heads] for c in ids], dtype=float)])
    y = np.array([np.mean([by[(c, s)] - by[(0, s)] for s in range(LIMIT)]) for c in ids])
    coefficients = np.linalg.lstsq(x, y, rcond=None)[0]
    options = AttributeOptions(fit="ols", bootstrap=0, command=["test"])
    refit = attribution.refit_attribution(warehouse, runs["patterns"].run_id, options)
    assert refit.run_id != runs["patterns"].run_id and refit.fitted and refit.fit["fit"] == "ols"
    scores = _scores(warehouse, refit.run_id)
    assert [scores[head]["score"] for head in heads] == pytest.approx((-coefficients[1:]).tolist(), abs=1e-8)
    margins, single_heads = _stored(warehouse, runs["single"].run_id, "gold_margin")
    by_margin = attribution.refit_attribution(warehouse, runs["single"].run_id, AttributeOptions(target="margin", command=["test"]))
    scores = _scores(warehouse, by_margin.run_id)
    for condition, ablated_heads in single_heads.items():
        if condition:
            (head,) = ablated_heads
            assert scores[head]["score"] == pytest.approx(np.mean([margins[(0, s)] - margins[(condition, s)] for s in range(LIMIT)]), abs=1e-9)
    again = attribution.refit_attribution(warehouse, runs["patterns"].run_id, options)
    assert again.run_id == refit.run_id and again.fitted
    with open_session(warehouse) as session:
        spec = session.query("select spec from runs where run_id = $run", {"run": refit.run_id}).to_pylist()[0]["spec"]
    assert runs["patterns"].run_id in str(spec)
    for source, message in ((runs["gradient"].run_id, "stores none"), ("nosuchrun", "no run 'nosuchrun'")):
        with pytest.raises(UsageError, match=message):
            attribution.refit_attribution(warehouse, source, AttributeOptions(command=["test"]))


def _mask_by(warehouse, model, ranking_run: str):
    """A mask sweep (k = 1, top) ranked by ``ranking_run``, after an extraction of the same samples (both resume)."""
    run_extract(warehouse, ExtractOptions(model=str(model), benchmark=BENCHMARK, limit=LIMIT, rows=False, device="cpu", command=["test"]))
    options = MaskOptions(model=str(model), benchmark=BENCHMARK, limit=LIMIT, k=("1",), strategies=("top",), device="cpu", ranking_run=ranking_run, command=["test"])
    return mask_sweep(warehouse, options)[0]


def test_downstream_commands_take_an_attribution_run(attributed, tiny_mha):
    warehouse, runs = attributed
    single = runs["single"].run_id
    with open_session(warehouse) as session:
        scores, recorded = ranked_scores(session, single, "concentration_x_sum", "gen1")
        exported = export_heads(session, single, "retrieval-json")
    assert recorded == "attribution" and list(scores.values()) == sorted(scores.values(), reverse=True)
    assert '"0-0": [' in exported
    best = next(iter(scores))
    masked = _mask_by(warehouse, tiny_mha, single)
    with open_session(warehouse) as session:
        top = session.query("select heads, ranking_score from sweep_conditions where run_id = $run and condition_id = 1", {"run": masked.run_id}).to_pylist()[0]
        extraction = session.query("select run_id from runs where kind = 'extract'").to_pylist()[0]["run_id"]
        agreement = run_mart(session, "ranking_agreement", {"run_a": extraction, "run_b": single}).to_pylist()
        between = run_mart(session, "ranking_agreement", {"run_a": runs["patterns"].run_id, "run_b": single}).to_pylist()
        for run in runs.values():  # the mart's sidecar data tests on every method's run
            assert data_test_failures(get_mart("attribution_ranking"), run_mart(session, "attribution_ranking", {"run_id": run.run_id})) == []
    assert [(h["layer"], h["head"]) for h in top["heads"]] == [best] and top["ranking_score"] == "attribution"
    _visual_heads_carry_the_newest_attribution(warehouse, extraction, runs)
    assert agreement and agreement[0]["n_heads"] == 12 and -1 <= agreement[0]["spearman"] <= 1
    assert (agreement[0]["query_a"], agreement[0]["score_a"], agreement[0]["query_b"], agreement[0]["score_b"]) == ("gen1", "concentration_x_sum", None, None)
    assert between[0]["n_heads"] == 12


def _visual_heads_carry_the_newest_attribution(warehouse, extraction: str, runs) -> None:
    """visual_heads sets beside each head of the extraction its score in the newest attribution run of the same
    model and benchmark (by creation time, then run id: the runs of this module are made within a second or two),
    and its rank there, both from the stored head_attributions rows."""
    manifests = [json.loads(run.manifest.read_text()) for run in open_warehouse(warehouse).run_folders()]
    newest = max((m["created"], m["run_id"]) for m in manifests if m["kind"] == "attribution")[1]
    method = next(name for name, run in runs.items() if run.run_id == newest)
    with open_session(warehouse) as session:
        visual = run_mart(session, "visual_heads", {}).to_pylist()
        stored = session.query("select layer, head, score, ci_low, ci_high from head_attributions where run_id = $run", {"run": newest}).to_pylist()
    by_head = {(row["layer"], row["head"]): row["score"] for row in stored}
    interval = {(row["layer"], row["head"]): (row["ci_low"], row["ci_high"]) for row in stored}
    order = sorted(by_head, key=lambda head: (-by_head[head], head))
    assert len(visual) == len(by_head) == 12
    for row in visual:
        head = (row["layer"], row["head"])
        assert row["run_id"] == extraction and row["attribution_run"] == newest and row["attribution_method"] == method
        assert row["attribution"] == pytest.approx(by_head[head]) and row["attribution_rank"] == order.index(head) + 1
        assert (row["attribution_ci_low"], row["attribution_ci_high"]) == pytest.approx(interval[head])
    # one method's newest run: each of this module's runs is its method's only one
    mart = get_mart("visual_heads")
    assert mart.parameters["attribution_method"]["choices"] == ["any", *METHODS]
    with open_session(warehouse) as session:
        for name, run in runs.items():
            chosen = run_mart(session, "visual_heads", {"attribution_method": name}).to_pylist()
            stored = session.query("select layer, head, score from head_attributions where run_id = $run", {"run": run.run_id}).to_pylist()
            scores = {(row["layer"], row["head"]): row["score"] for row in stored}
            assert len(chosen) == 12 and {row["attribution_run"] for row in chosen} == {run.run_id}, name
            assert {row["attribution_method"] for row in chosen} == {name}
            assert all(row["attribution"] == pytest.approx(scores[(row["layer"], row["head"])]) for row in chosen)


def test_cli_refuses_bad_input_in_one_line(tmp_path, tiny_mha):
    runner = CliRunner()
    for args, expected in (
        (["--fraction", "0"], "strictly between 0 and 1"),
        (["--method", "shapley"], "--method takes patterns, single, gradient"),
        (["--benchmark", "toy-shapes-caption"], "without a gold option"),
        (["--fit", "ols", "--patterns", "13"], "--fit ols needs more patterns than heads: 13 patterns for 12 heads"),
        (["--patterns", "3"], "--patterns takes 12 to 65536 (each pattern is a condition of the sweep; fewer than 12 leave the fit's"),  # was fitted silently
        (["--ablation", "paper"], "--ablation takes zero, mean"),
        (["--seed", "-1"], "--seed takes 0 to 4294967295 (a NumPy seed), got -1"),  # was NumPy's ValueError: an internal error
        (["--patterns", "99999999999"], "--patterns takes 12 to 65536 (each pattern is a condition of the sweep; "),  # was a 23 TiB MemoryError
        (["--bootstrap", "10000000000"], "--bootstrap takes 0 to 100000 resamples, got 10000000000"),
    ):
        result = runner.invoke(app, ["attribute", "--model", str(tiny_mha), "--warehouse", str(tmp_path / "wh"), "--limit", "2", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("attnwh: error:") and expected in lines[0], result.output
    # a refit reads the run's model, samples and patterns: options of a sweep given beside it would be silently not read
    result = runner.invoke(app, ["attribute", "--refit", "somerun", "--method", "single", "--limit", "3", "--fit", "lasso", "--warehouse", str(tmp_path / "wh")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "attnwh: error: --refit fits the run's stored targets again: --limit, --method do not apply (it reads --fit, --alpha, --bootstrap, --seed, --target)"
    ], result.output


def test_report_page_sets_attention_beside_attribution(attributed, tiny_mha, tmp_path):
    """The page's headline and table, against Spearman's rho computed with scipy from the stored attribution
    scores and the extraction run's head ranking (the head_ranking mart, not ranking_agreement)."""
    from scipy.stats import spearmanr

    from attnwh.reports.build import build_report

    warehouse, runs = attributed
    extraction = run_extract(warehouse, ExtractOptions(model=str(tiny_mha), benchmark=BENCHMARK, limit=LIMIT, rows=False, device="cpu", command=["test"])).run_id
    rhos = []
    with open_session(warehouse) as session:
        attention = {(row["layer"], row["head"]): row["score"] for row in run_mart(session, "head_ranking", {"run_id": extraction}).to_pylist()}
        for run in runs.values():
            causal = _scores(warehouse, run.run_id)
            heads = sorted(attention)
            rhos.append(spearmanr([attention[head] for head in heads], [causal[head]["score"] for head in heads]).statistic)
    _mask_by(warehouse, tiny_mha, runs["single"].run_id)
    with open_session(warehouse) as session:
        for name in ("report_attribution_heads", "report_causal_masking"):  # the page's marts: their sidecar data tests
            assert data_test_failures(get_mart(name), run_mart(session, name, {})) == []
        masking = run_mart(session, "report_causal_masking", {}).to_pylist()
    assert {row["ranking"] for row in masking} == {"top by attribution"} and {row["k"] for row in masking} == {0, 1}  # the sweep ranked by single
    build_report(warehouse, tmp_path / "report")
    page = html.unescape((tmp_path / "report" / "causal.html").read_text())
    assert f"Over 3 attribution run(s) of 1 model(s), where heads look (concentration_x_sum on gen1) and what ablating them does agree {strength(float(np.median(rhos)))}" in page
    assert f"Spearman's rho {np.median(rhos):.2f} (median) (from {min(rhos):.2f} to {max(rhos):.2f})" in page
    assert "Attention score against attribution, per head" in page and page.count('class="chart"') >= 1


WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
BAD_OPTIONS = st.one_of(
    st.tuples(st.just("--fraction"), st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(float("nan"))).map(repr)),
    st.tuples(st.just("--fraction"), WORDS),
    st.tuples(st.just("--patterns"), st.integers(min_value=-(10**6), max_value=11).map(str)),
    st.tuples(st.just("--bootstrap"), st.integers(min_value=-(10**6), max_value=-1).map(str)),
    st.tuples(st.just("--alpha"), st.one_of(st.floats(max_value=0.0), st.just(float("inf")), st.just(float("nan"))).map(repr)),
    st.tuples(
        st.sampled_from(["--method", "--target", "--ablation", "--fit"]),
        WORDS.filter(lambda word: word not in ("patterns", "single", "gradient", "logprob", "margin", "zero", "mean", "ridge", "lasso", "ols")),
    ),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(BAD_OPTIONS)
def test_generated_bad_options_give_one_line(capsys, tmp_path, bad):
    """Generated bad values through the console entry point: one line and a non-zero exit, never a traceback."""
    option, text = bad
    code, out, err = run_cli(capsys, "attribute", "--warehouse", str(tmp_path / "wh"), "--limit", "1", f"{option}={text}")
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("attnwh: error:"), (option, text, err)


def _kv_swap_target(model_path, pixels_of):
    """The sweep's batch through stock SDPA in float64, and the gold option's log-probability with chosen heads'
    ``k_proj`` / ``v_proj`` outputs at the image's positions replaced by those of the same prompt with the
    baseline pixels ``pixels_of(pixel_values)``: ``target(swapped)``, swapped a set of (layer, kv_head)."""
    setup, loaded, batch, model, head_dim = _stock(model_path)
    text = model.config.text_config
    inputs = {key: value.double() if value.is_floating_point() else value for key, value in batch.encoded.items()}
    image = inputs["input_ids"] == model.config.image_token_id
    layers = model.model.language_model.layers
    recorded: dict[tuple[int, str], torch.Tensor] = {}
    swapped: set[tuple[int, int]] = set()

    def hook(layer: int, name: str, record: bool):
        def forward(module, args, output):
            if record:
                recorded[(layer, name)] = output.detach().clone()
                return None
            output = output.clone()
            for swapped_layer, kv_head in swapped:
                if swapped_layer == layer:
                    cols = slice(kv_head * head_dim, (kv_head + 1) * head_dim)
                    output[..., cols] = torch.where(image[..., None], recorded[(layer, name)][..., cols], output[..., cols])
            return output

        return forward

    handles = [getattr(layer.self_attn, name).register_forward_hook(hook(index, name, True)) for index, layer in enumerate(layers) for name in ("k_proj", "v_proj")]
    with torch.inference_mode():
        model(**{**inputs, "pixel_values": pixels_of(inputs["pixel_values"])})
    for handle in handles:
        handle.remove()
    for index, layer in enumerate(layers):
        for name in ("k_proj", "v_proj"):
            getattr(layer.self_attn, name).register_forward_hook(hook(index, name, False))
    tokenizer = loaded.processor.tokenizer
    letters = [sorted({tokenizer.convert_tokens_to_ids(letter)}) for letter in "ABCD"]
    gold = [ord(item.sample.gold) - ord("A") for item in batch.items]

    def target(heads: set[tuple[int, int]]) -> np.ndarray:
        swapped.clear()
        swapped.update(heads)
        with torch.inference_mode():
            log_probs = torch.log_softmax(model(**inputs).logits[:, -1], dim=-1)
        return np.array([float(torch.logsumexp(log_probs[row, letters[g]], dim=0)) for row, g in enumerate(gold)])

    return target, (text.num_hidden_layers, text.num_attention_heads), (setup, loaded)


BASELINE_PIXELS = {"blank-image": torch.zeros_like, "mean-image": lambda pixels: pixels.mean(dim=0, keepdim=True).expand_as(pixels)}


@pytest.mark.parametrize("ablation", sorted(BASELINE_PIXELS))
def test_single_by_a_baseline_image_equals_swapping_the_heads_k_v_projections(tmp_path, tiny_mha, ablation):
    """Ablation by a baseline image (multi-head attention: each query head has its own keys): a head's score is
    what replacing its ``k_proj`` and ``v_proj`` outputs at the image positions with the baseline image's does
    to the gold option's log-probability in stock transformers (the rotary embedding rotates the swapped keys
    at the same positions, so this is the swap of the rotated keys attnwh makes)."""
    run = run_attribute(tmp_path / "wh", prepare_attribute(_options(tiny_mha, method="single", ablation=ablation)))
    target, (n_layers, n_heads), _ = _kv_swap_target(tiny_mha, BASELINE_PIXELS[ablation])
    base, scores = target(set()), _scores(tmp_path / "wh", run.run_id)
    for layer in range(n_layers):
        for head in range(n_heads):
            drops = base - target({(layer, head)})
            assert scores[(layer, head)]["score"] == pytest.approx(drops.mean(), abs=2e-5), (layer, head)
    assert max(abs(row["score"]) for row in scores.values()) > 1e-3, "some head must read the image"


def _varied_pope(root) -> str:
    """A POPE file of six questions of different lengths (a batch of them is left-padded) and their images."""
    from tests.fixtures_benchmarks import jpeg, json_line, write_images, write_lines

    questions = [
        "Is there a red circle in the image?",
        "Is there a ball?",
        "Is there a big blue round object in the middle of this picture on the left side?",
        "Is there a cat?",
        "Is there a small red circle somewhere near the top?",
        "Is there a dog here?",
    ]
    write_images(root / "val2014", {f"COCO_val2014_{i:012d}.jpg": jpeg((64 - 4 * i, 48)) for i in range(1, 7)})
    lines = [json_line({"question_id": i, "image": f"COCO_val2014_{i:012d}.jpg", "text": text, "label": ("yes", "no")[i % 2]}) for i, text in enumerate(questions, 1)]
    write_lines(root / "coco_pope_adversarial.json", lines)
    return str(root)


@pytest.mark.parametrize("model_name", ["tiny_mha", "tiny_gqa"])
def test_the_baseline_images_keys_of_a_left_padded_row_are_those_of_the_row_alone(tmp_path, model_name, request):
    """The baseline image's keys and values, recorded in one left-padded batch, equal what transformers' own cache
    holds for each row alone with the blank image (no padding: the positions generate gives the row's tokens).
    Recorded by a plain forward they were rotated at positions shifted by the row's padding, so an ablated head saw
    the baseline image at the wrong distance (every padded sample's target off by ~1e-3 on these toys)."""
    from attnwh.extract.image_swap import BaselineKV

    model_path = request.getfixturevalue(model_name)
    options = AttributeOptions(
        model=str(model_path), benchmark="pope", data=_varied_pope(tmp_path / "pope"), device="cpu", dtype="float32", command=["test"], method="single", ablation="blank-image"
    )
    setup = prepare_attribute(options)
    loaded = load_model(setup.run.source, dtype=torch.float32, device=torch.device("cpu"))
    (batch,) = SweepSamples(loaded, setup.run, 6).each_batch()
    mask = batch.encoded["attention_mask"]
    padding = (mask == 0).sum(dim=1)
    assert len(set(padding.tolist())) > 2  # the rows are padded by different amounts
    recorded = BaselineKV(loaded, "blank-image").of(batch.encoded)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa").eval()
    for row in range(mask.shape[0]):
        start = int(padding[row])
        alone = {"input_ids": batch.encoded["input_ids"][row : row + 1, start:], "attention_mask": mask[row : row + 1, start:]}
        alone["pixel_values"] = torch.zeros_like(batch.encoded["pixel_values"][row : row + 1])
        with torch.inference_mode():
            cache = model(**alone, use_cache=True).past_key_values
        for layer, (key, value) in recorded.items():
            assert torch.allclose(key[row, :, start:], cache.layers[layer].keys[0], atol=1e-5), (row, layer)
            assert torch.allclose(value[row, :, start:], cache.layers[layer].values[0], atol=1e-5), (row, layer)


def test_a_grouped_query_head_reads_the_baseline_image_alone_and_stacked_or_not(tiny_gqa):
    """Grouped-query attention: both query heads of a KV group swapped equal the group's ``k_proj`` / ``v_proj``
    swapped in stock transformers; one query head of the group alone is a different condition (the mask is per
    query head); stacked, replayed and plain evaluation agree."""
    from attnwh.extract.image_swap import BaselineKV, ImageSwap

    target, _, (setup, loaded) = _kv_swap_target(tiny_gqa, torch.zeros_like)
    source = BaselineKV(loaded, "blank-image")
    group = [[], [ImageSwap([(1, 0), (1, 1)], source)], [ImageSwap([(1, 0)], source)], [ImageSwap([(2, 2), (2, 3), (0, 1)], source)]]
    plain = SweepSamples(loaded, setup.run, LIMIT, targets=True)
    stacked = SweepSamples(loaded, setup.run, LIMIT, stack=3, targets=True)
    evaluated = [[row["gold_logprob"] for row in plain.evaluate(interventions)] for interventions in group]
    for rows, expected in zip(stacked.evaluate_group(group), evaluated):
        assert [row["gold_logprob"] for row in rows] == pytest.approx(expected, abs=1e-5)
    assert stacked.reuse_off is None
    assert evaluated[0] == pytest.approx(target(set()), abs=2e-5)
    assert evaluated[1] == pytest.approx(target({(1, 0)}), abs=2e-5)  # query heads 0 and 1 share KV head 0
    assert np.abs(np.array(evaluated[2]) - np.array(evaluated[1])).max() > 1e-6
    assert np.abs(np.array(evaluated[3]) - np.array(evaluated[0])).max() > 1e-6


def test_baseline_image_ablation_refusals(tmp_path, tiny_mha):
    from attnwh.core.errors import UsageError

    with pytest.raises(UsageError, match="gradient takes --ablation zero or mean"):
        prepare_attribute(_options(tiny_mha, method="gradient", ablation="blank-image"))


def test_a_patterns_fit_without_its_interval_kind_shows_no_interval(tmp_path, tiny_mha, attributed, monkeypatch):
    """Fits written before the patterns bootstrap resampled samples too record no ``interval``: their intervals were
    conditional on the samples (about half as wide), so the views leave them out and keep the scores; a fit of today
    records how its interval was drawn."""
    from attnwh.core.errors import UsageError
    from attnwh.extract import attribution

    warehouse, runs = attributed
    with open_session(warehouse) as session:
        kinds = {row["method"]: row["interval"] for row in session.query("select method, interval from attribution_fits").to_pylist()}
    assert kinds == {"patterns": "t over patterns and samples", "single": "t over samples", "gradient": "t over samples"}
    written = attribution._fit_row

    def as_before(*args, **kwargs):
        return {key: value for key, value in written(*args, **kwargs).items() if key != "interval"}

    monkeypatch.setattr(attribution, "_fit_row", as_before)
    old = run_attribute(tmp_path / "wh", prepare_attribute(_options(tiny_mha, method="patterns", patterns=16, bootstrap=10, p=0.25)))
    rows = _scores(tmp_path / "wh", old.run_id).values()
    assert all(row["score"] is not None for row in rows)
    assert all((row["std_error"], row["ci_low"], row["ci_high"]) == (None, None, None) for row in rows)
    # the bootstrap's percentiles ('patterns and samples', under-covering with few samples) are left out alike
    monkeypatch.setattr(attribution, "_fit_row", lambda *args, **kwargs: {**written(*args, **kwargs), "interval": "patterns and samples"})
    percentiles = run_attribute(tmp_path / "wh", prepare_attribute(_options(tiny_mha, method="patterns", patterns=16, bootstrap=10, p=0.25, seed=1)))
    rows = _scores(tmp_path / "wh", percentiles.run_id).values()
    assert all(row["score"] is not None and (row["std_error"], row["ci_low"], row["ci_high"]) == (None, None, None) for row in rows)
    new = _scores(warehouse, runs["patterns"].run_id).values()
    assert all(row["ci_low"] is not None and row["ci_low"] <= row["score"] <= row["ci_high"] for row in new)
    # its 16 patterns for 12 heads: least squares with a bootstrap is refused on a refit as on a sweep (2H needed)
    with pytest.raises(UsageError, match="twice as many patterns as heads"):
        attribution.refit_attribution(tmp_path / "wh", old.run_id, AttributeOptions(fit="ols", bootstrap=10, command=["test"]))
    assert attribution.refit_attribution(tmp_path / "wh", old.run_id, AttributeOptions(fit="ols", bootstrap=0, command=["test"])).fitted


def test_one_sample_stores_no_interval_and_too_few_patterns_are_not_refitted(tmp_path, tiny_mha, monkeypatch):
    """With one sample (--limit 1) a patterns run's bootstrap could resample the patterns only, yet its intervals were
    stored as over patterns and samples: its standard errors and intervals are null, as single's are, its scores
    kept. A run of fewer patterns than a fit takes (made here with the minimum lowered, as a run made before it was)
    is refused by --refit in one line."""
    from attnwh.extract import attribution

    one = dict(model=str(tiny_mha), benchmark=BENCHMARK, limit=1, device="cpu", dtype="float32", command=["test"])
    for method, extra in (("patterns", {"patterns": 12, "bootstrap": 10, "p": 0.25}), ("single", {})):
        run = run_attribute(tmp_path / "wh", prepare_attribute(AttributeOptions(method=method, **one, **extra)))
        with open_session(tmp_path / "wh") as session:
            stored = session.query("select score, std_error, ci_low, ci_high from head_attributions where run_id = $run", {"run": run.run_id}).to_pylist()
        assert run.fit["n_samples"] == 1 and len(stored) == 12 and any(row["score"] is not None for row in stored), method
        assert all((row["std_error"], row["ci_low"], row["ci_high"]) == (None, None, None) for row in stored), method
    monkeypatch.setattr(attribution, "MIN_PATTERNS", 2)
    few = run_attribute(tmp_path / "wh", prepare_attribute(AttributeOptions(method="patterns", patterns=4, bootstrap=0, p=0.25, **one)))
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["attribute", "--refit", few.run_id, "--warehouse", str(tmp_path / "wh")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"attnwh: error: --refit: {few.run_id} holds 4 patterns; a fit takes at least 12 (as --patterns does): sweep again with --patterns 12 or more"
    ], result.output


def test_a_bottom_sweep_by_a_ranking_with_unscored_heads_says_they_go_first(tmp_path, tiny_mha, monkeypatch):
    """A patterns run whose patterns never ablate head (0, 0) has no score for it; masking its bottom heads masks that
    head first (it ranks below every scored head), and the sweep says so in one warning line."""
    from attnwh.extract import attribution

    drawn = attribution.draw_patterns

    def never_head_0(n_heads, n, p, seed):
        patterns = drawn(n_heads, n, p, seed)
        patterns[:, 0] = False
        patterns[~patterns.any(axis=1), 1] = True  # no pattern empty (it would be the baseline)
        return patterns

    monkeypatch.setattr(attribution, "draw_patterns", never_head_0)
    run = run_attribute(tmp_path / "wh", prepare_attribute(_options(tiny_mha, method="patterns", patterns=16, bootstrap=0, p=0.25)))
    assert _scores(tmp_path / "wh", run.run_id)[(0, 0)]["score"] is None
    warnings: list[str] = []
    options = MaskOptions(model=str(tiny_mha), benchmark=BENCHMARK, limit=LIMIT, k=("1",), strategies=("bottom",), device="cpu", ranking_run=run.run_id, command=["test"])
    result, _ = mask_sweep(tmp_path / "wh", options, warn=warnings.extend)
    assert [line for line in warnings if "no attribution for 1 of 12 heads (e.g. layer 0 head 0)" in line and "bottom masks them first" in line]
    with open_session(tmp_path / "wh") as session:
        masked = session.query("select heads from sweep_conditions where run_id = $run and condition_id > 0", {"run": result.run_id}).to_pylist()
    assert [[(h["layer"], h["head"]) for h in row["heads"]] for row in masked] == [[(0, 0)]]
