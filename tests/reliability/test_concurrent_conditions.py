"""Conditions run at once on one shared model give what each gives alone (issue 27, finding 1).

A Dask worker hands one cached model to every task it runs. Per-call state (the capture session, a head
mask, a KV pruning) used to live as attributes of that model's modules, so two tasks run at once on two
threads overwrote each other's settings without an error. Now it travels with the call
(``extract.forward``); these tests run different conditions side by side on one model, in threads and
through a Dask worker with several threads, and compare each with the same condition run alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from attnwh.extract.capture import CaptureSpec
from attnwh.extract.generation import generate_with_capture
from attnwh.extract.masking import HeadMask
from attnwh.extract.pruning import KVPrune, allocate
from attnwh.queries.library import open_session
from tests.integration.test_masking import _encoded, _loaded
from tests.reliability.harness import run_cli


def _conditions(n_layers: int, n_kv: int) -> list[tuple[str, list, CaptureSpec | None]]:
    """Eight conditions that give different answers or rows: the baseline, masks, prunings, captures."""
    scores = np.random.default_rng(0).random((n_layers, n_kv))
    return [
        ("baseline", [], None),
        ("mask zero", [HeadMask(((0, 0), (1, 1), (2, 0)), "zero")], None),
        ("mask paper", [HeadMask(((0, 1), (2, 1)), "paper")], None),
        ("prune 3% uniform", [KVPrune(allocate("uniform", 0.03, scores), "attention")], None),
        ("prune 50% score", [KVPrune(allocate("score", 0.5, scores), "stride")], None),
        ("capture", [], CaptureSpec(("prompt", "gen1"), rows=True, lens=True)),
        ("capture under pruning", [KVPrune(allocate("uniform", 0.25, scores), "attention")], CaptureSpec(("prompt", "gen1"), rows=True, lens=True)),
        ("mask and prune", [HeadMask(((1, 0),), "zero"), KVPrune(allocate("uniform", 0.1, scores), "attention")], None),
    ]


def _evaluate(loaded, encoded, interventions, capture, start: threading.Barrier | None = None) -> dict:
    if start is not None:
        start.wait()  # every thread starts its generation at the same moment
    generation, session, _ = generate_with_capture(loaded, encoded, capture, 4, interventions=interventions)
    result = {"answers": generation.answers, "logits": generation.first_logits}
    if session is not None:
        result["statistics"] = session.stacked_statistics()
        result["rows"] = session.stacked_rows()
        result["lens"] = {name: lens.target_rank for name, lens in generation.lens.items()}
    return result


def _equal(alone: dict, together: dict) -> None:
    assert together["answers"] == alone["answers"]
    assert torch.allclose(together["logits"], alone["logits"], rtol=0, atol=1e-5)
    for key in ("statistics", "rows"):
        assert (key in together) == (key in alone)
        for name in alone.get(key, {}):
            assert torch.allclose(together[key][name], alone[key][name], rtol=0, atol=1e-6, equal_nan=True), (key, name)
    if "lens" in alone:
        assert {name: rank.tolist() for name, rank in together["lens"].items()} == {name: rank.tolist() for name, rank in alone["lens"].items()}


@pytest.fixture(scope="module")
def shared_model(tiny_gqa):
    loaded = _loaded(tiny_gqa)
    encoded = _encoded(loaded, 3)
    info = loaded.info
    conditions = _conditions(info["n_layers"], info["n_kv_heads"])
    alone = {name: _evaluate(loaded, encoded, interventions, capture) for name, interventions, capture in conditions}
    # the conditions differ from each other, so a mix-up cannot go unseen
    answers = {name: str(result["answers"]) + str(result["logits"].sum().item()) + str("rows" in result) for name, result in alone.items()}
    assert len(set(answers.values())) == len(answers)
    return loaded, encoded, conditions, alone


@pytest.mark.parametrize("threads", [2, 4, 8])
def test_concurrent_conditions_on_one_model_equal_each_alone(shared_model, threads):
    loaded, encoded, conditions, alone = shared_model
    chosen = [conditions[(index * 3 + threads) % len(conditions)] for index in range(threads)]  # different mixes per count
    start = threading.Barrier(threads)
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(_evaluate, loaded, encoded, interventions, capture, start) for _, interventions, capture in chosen]
        together = [future.result() for future in futures]
    for (name, _, _), result in zip(chosen, together, strict=True):
        _equal(alone[name], result)


@pytest.mark.slow
def test_a_prune_sweep_on_a_dask_worker_with_four_threads_equals_the_local_loop(tmp_path, capsys):
    """The issue's own reproduction through the command line: one worker process running four conditions at once."""
    base = ["prune", "--limit", "32", "--device", "cpu", "--kv-share", "1,0.5,0.25,0.05", "--allocation", "uniform,random", "--seeds", "1"]
    results = {}
    for label, extra in (("local", []), ("four threads", ["--scheduler", "local:1", "--threads-per-worker", "4"])):
        warehouse = tmp_path / label.replace(" ", "-")
        for command in (["extract", "--limit", "32", "--device", "cpu", "--no-rows"], [*base, *extra]):
            code, _, err = run_cli(capsys, *command, "-w", str(warehouse))
            assert code == 0, err
        with open_session(warehouse) as session:
            results[label] = session.query(
                "select c.allocation, c.kv_share, r.sample_idx, r.parsed, r.correct from prune_results r join prune_conditions c using (run_id, condition_id) order by all"
            ).to_pylist()
    assert len(results["local"]) == 7 * 32
    assert results["four threads"] == results["local"]
