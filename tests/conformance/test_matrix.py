"""The conformance matrix over the installed transformers (``attnwh.extract.conformance``).

Every image-text-to-text architecture is checked on a tiny random model: captured rows against
transformers' eager attention on the same weights, image positions against where the model writes its
image features, the logit lens against the model's own logits, one-head masking, and a sweep's reuse
(its conditions, with images encoded once, the baseline's prefix replayed and three masks of the last layer in
one pass, against each on its own the plain way). The verdicts are
computed once per session, in two worker processes (``MATRIX_WORKERS``), and each architecture is its own
test case, so a regression names the architecture. ``EXPECTED`` (beside this file) is the matrix the
README reports: an architecture that stops being captured, or starts, fails here until both are updated.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from attnwh.extract import conformance

EXPECTED = json.loads((Path(__file__).with_name("expected_matrix.json")).read_text())
# captured architectures on which a sweep's reuse is turned off by its first batch's check (the rest: exact)
REUSE_OFF = {
    "gemma4+kv_sharing": "a replayed prefix failed (KeyError",  # its later layers read keys its skipped layers share
    "hunyuan_vl": "the text model is handed a different position_ids",  # its pixels pack every image in one row
    "blip-2": "a replayed prefix failed (TypeError",  # its forward needs pixel_values (the query tokens are made there) on every pass
    "instructblip": "a replayed prefix failed (TypeError",
}
MATRIX_WORKERS = int(os.environ.get("ATTNWH_MATRIX_WORKERS", "2"))
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="session")
def matrix() -> dict[str, conformance.Verdict]:
    names = conformance.matrix_names()
    return {verdict.model_type: verdict for verdict in conformance.run_matrix(names, MATRIX_WORKERS)}


def test_every_architecture_is_in_the_expected_matrix():
    assert sorted(EXPECTED) == sorted(conformance.matrix_names())


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_architecture_verdict(matrix, model_type):
    verdict = matrix[model_type]
    assert verdict.status == EXPECTED[model_type], f"{model_type}: {verdict.status}: {verdict.reason}"
    if verdict.status == conformance.CAPTURED:
        assert verdict.max_error is not None and verdict.max_error <= conformance.TOLERANCE
        assert verdict.image_tokens and verdict.image_tokens > 0
        if model_type in REUSE_OFF:  # the plain path then, said in a warning: never a crash, never a wrong answer
            assert verdict.reuse.startswith("turned off by the first batch's check") and REUSE_OFF[model_type] in verdict.reuse, verdict.reuse
        else:  # images once, prefix replayed, three last-layer masks in one pass: each condition answers as on its own
            assert verdict.reuse == "exact", f"{model_type}: {verdict.reuse}"


def test_at_least_sixty_architectures_are_captured():
    assert sum(status == conformance.CAPTURED for name, status in EXPECTED.items() if name not in conformance.VARIANTS) >= 60


def test_readme_states_the_matrix():
    architectures = {name: status for name, status in EXPECTED.items() if name not in conformance.VARIANTS}
    counts = {status: sum(value == status for value in architectures.values()) for status in conformance.STATUSES}
    text = README.read_text()
    stated = re.search(r"conformance matrix: \*\*(\d+) captured\*\*, (\d+) out of scope, (\d+) not built here, (\d+) failed", text)
    assert stated, "the README must state the matrix's counts"
    assert tuple(int(n) for n in stated.groups()) == tuple(counts[status] for status in conformance.STATUSES)
    for model_type, status in EXPECTED.items():
        if status == conformance.CAPTURED:
            assert f"`{model_type}`" in text, f"the README must list {model_type} among the captured architectures"
