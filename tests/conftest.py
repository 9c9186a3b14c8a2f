"""Shared fixtures: tiny offline LLaVA models saved to temp folders, and small warehouses."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from attnwh.extract.benchmarks import registry
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.prune_run import PruneOptions
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava
from attnwh.face.workflows import mask_sweep, prune_sweep

torch.set_num_threads(2)

HOSTILE_QUESTION = (
    "</script><script>document.documentElement.setAttribute('data-pwned', '1')</script> <img src=x onerror=\"document.documentElement.setAttribute('data-pwned', '2')\"> & done?"
)


def pytest_configure(config) -> None:
    """Under pytest-xdist (the README's ``-n 2``) the worker processes share the cores: one math thread each,
    for this process and the commands it starts (OpenMP threads of two processes oversubscribing two cores
    spin while waiting for each other: several times slower than one thread each)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def attnwh_home(tmp_path_factory) -> Path:
    """Build the embedded default model into a temp folder, never into the user's cache."""
    home = tmp_path_factory.mktemp("attnwh-home")
    previous = os.environ.get("ATTNWH_HOME")
    os.environ["ATTNWH_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("ATTNWH_HOME", None)
    else:
        os.environ["ATTNWH_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_mha(tmp_path_factory) -> Path:
    """A 3-layer × 4-head LLaVA (multi-head attention) with randomised norm weights."""
    return save_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-mha", TinyLlavaSpec(n_layers=3, n_heads=4, n_kv_heads=4, seed=1, randomise_norms=True))


@pytest.fixture(scope="session")
def tiny_gqa(tmp_path_factory) -> Path:
    """A 3-layer LLaVA with 4 query heads sharing 2 KV heads (grouped-query attention)."""
    return save_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-gqa", TinyLlavaSpec(n_layers=3, n_heads=4, n_kv_heads=2, seed=2, randomise_norms=True))


@pytest.fixture(params=["mha", "gqa"])
def tiny_model(request, tiny_mha, tiny_gqa) -> Path:
    return {"mha": tiny_mha, "gqa": tiny_gqa}[request.param]


@pytest.fixture(scope="session")
def hostile_warehouse_module(tmp_path_factory, tiny_mha):
    """An extraction and a mask sweep of the tiny LLaVA on 3 toy samples, the first with a hostile question."""
    original = registry.get_benchmark("toy-shapes")

    def load(data, split):
        samples = original.load(data, split)[:3]
        samples[0] = dataclasses.replace(samples[0], question=HOSTILE_QUESTION)
        return samples

    warehouse = tmp_path_factory.mktemp("hostile") / "wh"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry.BENCHMARKS, "toy-shapes", dataclasses.replace(original, load=load))
        run_extract(warehouse, ExtractOptions(model=str(tiny_mha), part_size=3, device="cpu", command=["test"]))
        mask_sweep(warehouse, MaskOptions(model=str(tiny_mha), k=("0", "1", "2"), seeds=1, device="cpu", command=["test"]))
        prune_sweep(warehouse, PruneOptions(model=str(tiny_mha), kv_shares=("1", "0.5"), seeds=1, device="cpu", command=["test"]))
    return warehouse


@pytest.fixture
def hostile_warehouse(hostile_warehouse_module):
    return hostile_warehouse_module
