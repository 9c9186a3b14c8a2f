"""The conformance matrix: which image-text-to-text architectures of the installed transformers attnwh
captures, each proven on a tiny random model (``extract.tiny_models``) against an independent reference.

Per architecture (``check_architecture``):

1. **Scope, from the config** (``discovery.describe``): out-of-scope models are named with the reason
   before any model is built (encoder-decoder, images by cross-attention, no image token, ...).
2. **Discovery, from the module tree** (``discovery.find_parts``) of the model built with attnwh's
   attention on the text sub-config only.
3. **Image positions**: the positions where the language model's input embeddings differ from the plain
   token embeddings (where the model wrote its image features) are exactly the positions of the image
   token ids, which attnwh's segments call image.
4. **Rows equal eager attention**: the captured last-prompt-row probabilities of every attention layer
   equal the attention weights of the same weights run with transformers' eager attention
   (``output_attentions=True``), fp32, within ``TOLERANCE``.
5. **Logit lens**: the lens of the last layer reproduces the model's own logits at the last position
   (which proves the final norm and output embeddings were found), and ranks are computed for every layer.
6. **Masking one head** changes only that head's attention output at its layer, and nothing before it.

``attnwh models --all`` prints the verdicts (cached per transformers version in the attnwh home);
the test suite runs the same checks over every architecture (``tests/conformance/test_matrix.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from attnwh.core.errors import ModelError, first_line
from attnwh.extract.capture import CaptureSpec, capture_session
from attnwh.extract.discovery import ModelSpec, OutOfScope, describe, find_parts
from attnwh.extract.forward import CAPTURE_ATTENTION, BatchView, LayerIntervention, forward_call
from attnwh.extract.lens import head_logits, head_transforms, logit_lens, matching_transform
from attnwh.extract.masking import HeadMask
from attnwh.extract.segments import IMAGE, prompt_segments

TOLERANCE = 1e-5
# bumped when the checks change (2: reuse; 3: the lens's probabilities; 4: the last layer's final rows; 5: BLIP-2 /
# InstructBLIP configured as their checkpoints, skips that build now checked, Ovis2's indicator tokens), so that
# verdicts cached by `attnwh models --all` are made again
CHECKS_VERSION = 5
CAPTURED, OUT_OF_SCOPE, NOT_BUILT, FAILED = "captured", "out of scope", "not built here", "failed"
STATUSES = (CAPTURED, OUT_OF_SCOPE, NOT_BUILT, FAILED)


@dataclass(frozen=True)
class Verdict:
    """One architecture's row of the matrix."""

    model_type: str
    architecture: str
    status: str  # one of STATUSES
    reason: str  # one line: what was proven, or why not
    layers: int | None = None  # attention layers
    decoder_layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    image_tokens: int | None = None  # per image, in the tiny model
    max_error: float | None = None  # captured rows against eager attention
    seconds: float | None = None
    reuse: str | None = None  # sweeps' reuse against the plain path: "exact", or what differed or failed (captured ones)

    def as_row(self) -> dict:
        return asdict(self)


class ConformanceFailure(Exception):
    """A check that did not hold (its message is the verdict's reason)."""


def matrix_names() -> list[str]:
    """What the matrix checks: every image-text-to-text model type, then the ``VARIANTS``."""
    return [*image_text_to_text_architectures(), *VARIANTS]


def image_text_to_text_architectures() -> dict[str, str]:
    """``model_type -> architecture class`` of every image-text-to-text model of the installed transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return dict(sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.items()))


# Variants of an architecture whose config switches on a code path its default leaves off, checked as
# architectures of their own: name -> (model type, settings by dotted path)
VARIANTS: dict[str, tuple[str, dict]] = {
    # Gemma 4's small models share the key-value cache of their last layers with earlier layers, and the
    # prefill then runs those layers over the last prompt position only (``logits_to_keep``, as ``generate``
    # passes it): the captured row and the lens must still be the last position's
    # (alternating layer kinds, so that each shared layer has an earlier layer of its kind; one head size)
    "gemma4+kv_sharing": (
        "gemma4",
        {"text_config.num_kv_shared_layers": 2, "text_config.per_layer_config": {}, "text_config.layer_types": ["sliding_attention", "full_attention"] * 3},
    )
}


def check_architecture(model_type: str) -> Verdict:
    """Run every check on a tiny random model of ``model_type`` (or of a ``VARIANTS`` name); never raises for a model's failure."""
    name = model_type
    model_type, settings = VARIANTS.get(name, (name, {}))
    architecture = image_text_to_text_architectures().get(model_type, model_type)
    verdict = _check(model_type, settings, architecture)
    return verdict if name == model_type else replace(verdict, model_type=name)


def _check(model_type: str, settings: dict, architecture: str) -> Verdict:
    from attnwh.extract import tiny_models

    started = time.perf_counter()
    try:
        config = tiny_models.tiny_config(model_type, settings)
    except tiny_models.TinyModelError as exc:
        return _scope_or(model_type, architecture, NOT_BUILT, first_line(exc))
    except Exception as exc:  # a config transformers itself cannot make
        return Verdict(model_type, architecture, NOT_BUILT, f"config: {type(exc).__name__}: {first_line(exc)}")
    try:
        spec = describe(config)
    except OutOfScope as exc:
        return Verdict(model_type, architecture, OUT_OF_SCOPE, str(exc).split(": ", 1)[-1])
    except ModelError as exc:
        return Verdict(model_type, architecture, FAILED, first_line(exc))
    counts = dict(layers=spec.n_layers, decoder_layers=spec.n_decoder_layers, heads=spec.n_heads, kv_heads=spec.n_kv_heads)
    try:
        image_tokens, max_error, reuse = _run_checks(model_type, spec, settings)
    except tiny_models.TinyModelError as exc:
        return Verdict(model_type, architecture, NOT_BUILT, first_line(exc), **counts)
    except (ConformanceFailure, ModelError) as exc:
        return Verdict(model_type, architecture, FAILED, first_line(exc), **counts, seconds=round(time.perf_counter() - started, 2))
    except Exception as exc:  # a model's own error under attnwh's attention: a failure of the matrix, named
        return Verdict(model_type, architecture, FAILED, f"{type(exc).__name__}: {first_line(exc)}", **counts, seconds=round(time.perf_counter() - started, 2))
    hybrid = f", {spec.n_layers} of {spec.n_decoder_layers} layers attention" if spec.hybrid else ""
    reason = f"rows = eager (max error {max_error:.1e}), image tokens where the model writes image features, lens, one-head masking{hybrid}"
    seconds = round(time.perf_counter() - started, 2)
    return Verdict(model_type, architecture, CAPTURED, reason, **counts, image_tokens=image_tokens, max_error=max_error, seconds=seconds, reuse=reuse)


def _scope_or(model_type: str, architecture: str, status: str, reason: str) -> Verdict:
    """An architecture whose tiny model cannot be made here: out of scope if its default config says so, with the
    keys its checkpoints set (``checkpoint_sets``: an image token id the default leaves unset) set to any id."""
    from transformers import AutoConfig

    from attnwh.extract import tiny_models

    try:
        config = AutoConfig.for_model(model_type)
        for key in tiny_models.tiny_overrides().get(model_type, {}).get("checkpoint_sets", []):
            setattr(config, key, 0)
        describe(config)
    except OutOfScope as exc:
        return Verdict(model_type, architecture, OUT_OF_SCOPE, str(exc).split(": ", 1)[-1])
    except Exception:  # noqa: S110  (the tiny model's reason is the one to report)
        pass
    return Verdict(model_type, architecture, status, reason)


def _run_checks(model_type: str, spec: ModelSpec, settings: dict) -> tuple[int, float, str]:
    from attnwh.extract import tiny_models

    model = tiny_models.build_tiny(model_type, attn_implementation=spec.attn_implementation(CAPTURE_ATTENTION), settings=settings)
    reference = tiny_models.build_tiny(model_type, attn_implementation="eager", settings=settings)
    reference.load_state_dict(model.state_dict())
    parts = find_parts(model, spec)
    inputs = tiny_models.tiny_inputs(model_type, model)
    segments = prompt_segments(inputs["input_ids"], inputs["attention_mask"], spec.image_token_ids)
    seen: dict[str, torch.Tensor] = {}

    def record(module, args, kwargs):  # what the language model is given: where the model wrote its image features
        if kwargs.get("inputs_embeds") is not None:
            seen["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = parts.text_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            expected = reference(**inputs, output_attentions=True, **_last_logits(reference))
            with capture_session(parts.text_model, parts.attention_modules, CaptureSpec(("prompt",), rows=True, lens=True), segments, None, parts.decoder_layers) as session:
                captured = model(**inputs, **_last_logits(model))
    finally:
        handle.remove()
    image_tokens = _check_image_positions(model, parts, inputs, segments, seen.get("inputs_embeds"))
    if not session.complete():
        missing = [layer for layer, row in enumerate(session.rows["prompt"]) if row is None]
        raise ConformanceFailure(f"attention layers {missing} never called attnwh's attention function")
    logit_error = (captured.logits[:, -1] - expected.logits[:, -1]).abs().max().item()
    if logit_error > 1e-4:
        raise ConformanceFailure(f"logits under capture differ from eager by {logit_error:.1e}")
    max_error = _check_rows(spec, session.stacked_rows()["prompt"], _eager_attentions(expected))
    _check_lens(parts, session, captured.logits, spec)
    _check_one_head_mask(model, parts, spec, inputs, segments)
    return image_tokens, max_error, _check_reuse(model_type, model, spec, inputs)


def _eager_attentions(output) -> tuple:
    """The eager reference's attention maps: the output's own, or its language model's (BLIP-2 and InstructBLIP
    return the text model's outputs as ``language_model_outputs``)."""
    if getattr(output, "attentions", None) is not None:
        return output.attentions
    inner = getattr(output, "language_model_outputs", None)
    if getattr(inner, "attentions", None) is not None:
        return inner.attentions
    raise ConformanceFailure(f"{type(output).__name__} holds no attention maps for the eager reference")


REUSE_NEW_TOKENS = 3  # decode steps after the prefill: a replayed cache (or state) must serve them too


def _check_reuse(model_type: str, model, spec: ModelSpec, inputs: dict[str, torch.Tensor]) -> str:
    """A sweep's reuse (extract.reuse: images encoded once, the baseline's prefix replayed, conditions stacked three to a
    pass) against each condition on its own the plain way, on the tiny model: the baseline, one-head masks of the first
    and a middle attention layer, three masks of the last (one stack of three, started there), and a cache pruning
    whose prefill is replayed whole; ``REUSE_NEW_TOKENS`` greedy tokens each. "exact" when the first batch's check keeps reuse (and the
    last layer's final rows, where hooked) on, the answers are identical and the first
    tokens' log-probabilities within ``TOLERANCE``; else what differed (a sweep on this architecture then runs the plain
    way after its first batch's check, or, for a difference that check does not see, must not reuse)."""
    import numpy as np

    from attnwh.extract.models import LoadedModel, ModelSource
    from attnwh.extract.pruning import KVPrune, allocate
    from attnwh.extract.sweep import SweepSamples

    n, heads, last = spec.n_layers, spec.n_heads, spec.n_layers - 1
    group = [
        [],
        [HeadMask(((0, 0),), "zero")],
        [HeadMask(((n // 2, 1 % heads),), "zero")],
        [HeadMask(((last, 0),), "zero")],
        [HeadMask(((last, heads - 1),), "zero")],
        [HeadMask(((last, 0), (last, heads - 1)), "zero")],
        [KVPrune(allocate("uniform", 0.5, np.zeros((n, spec.n_kv_heads))), "attention")],
    ]
    try:
        loaded = LoadedModel(ModelSource(model_type, "tiny", "tiny"), spec, model, None, torch.device("cpu"), next(model.parameters()).dtype)
        samples, batch = SweepSamples.of_inputs(loaded, inputs, REUSE_NEW_TOKENS, stack=3)
        reused = samples.reused_generations(batch, group)
        if samples.reuse_off is not None:
            return f"turned off by the first batch's check: {samples.reuse_off}"
        if samples.final_rows_off is not None:
            return f"the last layer's final rows turned off by the first batch: {samples.final_rows_off}"
        if samples.stack.largest != 3:
            return f"not checked: its largest stack held {samples.stack.largest} conditions, not 3"
        for index, interventions in enumerate(group):
            plain = samples.plain_generation(batch, interventions)
            if reused[index].answers != plain.answers:
                return f"condition {index} answers differently with reuse"
            gap = (torch.log_softmax(reused[index].first_logits.float(), -1) - torch.log_softmax(plain.first_logits.float(), -1)).abs().max().item()
            if gap > TOLERANCE:
                return f"condition {index}'s first-token log-probabilities differ by {gap:.1e} with reuse"
    except Exception as exc:  # noqa: BLE001  (a model's own error under reuse: reported, not raised)
        return f"error: {type(exc).__name__}: {first_line(exc)}"
    return "exact"


def _check_image_positions(model, parts, inputs, segments, inputs_embeds: torch.Tensor | None) -> int:
    """Where the model writes image features (the language model's ``inputs_embeds`` differ from the token
    embeddings) must be the positions attnwh calls image."""
    if inputs_embeds is None:
        raise ConformanceFailure(f"the language model ({type(parts.text_model).__name__}) was not given inputs_embeds: cannot see where image features go")
    with torch.inference_mode():
        embedded = model.get_input_embeddings()(inputs["input_ids"]).to(inputs_embeds.dtype)
    real = inputs["attention_mask"].bool()
    written = ((inputs_embeds - embedded).abs().amax(dim=-1) > 1e-6) & real
    image = segments == IMAGE
    if not image.any():
        raise ConformanceFailure("no image token in the tiny inputs")
    if not torch.equal(written, image):
        extra, missed = int((written & ~image).sum()), int((image & ~written).sum())
        raise ConformanceFailure(f"image features land elsewhere than the image tokens ({extra} other positions changed, {missed} image positions unchanged)")
    counts = image.sum(dim=1)
    return int(counts[0])


def _last_logits(model) -> dict:
    """Logits of the last position only, where the model allows it: a 262k-token vocabulary over every
    position costs more than the rest of a tiny model's forward pass."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _check_rows(spec: ModelSpec, rows: torch.Tensor, attentions) -> float:
    """``rows`` [layer, batch, head, key] against eager's [batch, head, query, key] per layer."""
    if attentions is None:
        raise ConformanceFailure("eager attention returned no attention weights")
    attentions = [weights for weights in attentions if weights is not None]
    if len(attentions) == spec.n_decoder_layers and spec.hybrid:
        attentions = [attentions[index] for index in spec.attention_layers]
    if len(attentions) != spec.n_layers:
        raise ConformanceFailure(f"eager attention gave {len(attentions)} layers of weights for {spec.n_layers} attention layers")
    worst = 0.0
    for layer, weights in enumerate(attentions):
        expected = weights[:, :, -1, :].float()
        captured = rows[layer]
        if captured.shape != expected.shape:
            raise ConformanceFailure(f"layer {layer}: captured rows {tuple(captured.shape)}, eager {tuple(expected.shape)}")
        worst = max(worst, (captured - expected).abs().max().item())
    if worst > TOLERANCE:
        raise ConformanceFailure(f"captured rows differ from eager attention by {worst:.1e} (tolerance {TOLERANCE:.0e})")
    return worst


def _check_lens(parts, session, logits: torch.Tensor, spec: ModelSpec) -> None:
    hidden = session.stacked_hidden()["prompt"]
    if hidden.shape[0] != spec.n_decoder_layers + 1:
        raise ConformanceFailure(f"the lens saw {hidden.shape[0]} hidden states for {spec.n_decoder_layers} decoder layers")
    final = logits[:, -1, :].float()
    # the probabilities too: what the model does to lm_head's logits (a cap, a scale) is matched, not assumed
    transform = matching_transform(head_logits(hidden[-1], parts.final_norm, parts.lm_head), final, head_transforms(spec.final_logit_softcapping, spec.logit_scales), 1e-4)
    if transform is None:
        raise ConformanceFailure("the lens of the last layer does not give the model's own probabilities under any known transform of its logits (cap, scale)")
    lens = logit_lens(hidden, parts.final_norm, parts.lm_head, transform)
    if not torch.equal(lens.target_token, final.argmax(dim=-1)) or not bool((lens.target_rank[-1] == 1).all()):
        raise ConformanceFailure("the lens of the last layer does not reproduce the model's own top token (final norm or output embeddings not found)")
    if lens.target_rank.shape[0] != spec.n_decoder_layers + 1:
        raise ConformanceFailure("lens ranks missing for some layers")


class _Recorder(LayerIntervention):
    """Keeps the attention output of one layer (after the interventions bound before it)."""

    def __init__(self, kept: dict, layer: int):
        self.kept, self.layer = kept, layer

    def output(self, output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        self.kept[self.layer] = output.detach().clone()
        return output


@dataclass
class _Recording:
    kind = "record"
    kept: dict

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        return {layer: _Recorder(self.kept, layer) for layer in range(view.n_layers)}


def _check_one_head_mask(model, parts, spec: ModelSpec, inputs, segments) -> None:
    layer, head = spec.n_layers - 1, spec.n_heads - 1
    view = BatchView(spec.n_layers, spec.n_heads, spec.n_kv_heads, segments, inputs["attention_mask"])
    outputs = []
    for interventions in ((), (HeadMask([(layer, head)]),)):
        kept: dict = {}
        bound = [intervention.bind(view) for intervention in (*interventions, _Recording(kept))]
        with torch.inference_mode(), forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, bound):
            model(**inputs, **_last_logits(model))
        outputs.append(kept)
    plain, masked = outputs
    if sorted(plain) != list(range(spec.n_layers)):
        raise ConformanceFailure("interventions did not reach every attention layer")
    for index in range(layer):
        if not torch.equal(plain[index], masked[index]):
            raise ConformanceFailure(f"masking a head of layer {layer} changed layer {index}")
    others = [h for h in range(spec.n_heads) if h != head]
    if masked[layer][:, :, head].abs().max().item() != 0 or not torch.equal(plain[layer][:, :, others], masked[layer][:, :, others]):
        raise ConformanceFailure(f"masking head {head} of layer {layer} did not change that head's output only")


def check_quietly(model_type: str) -> Verdict:
    """``check_architecture`` in a worker process of ``run_matrix``: one thread, and transformers' warnings
    about the random tiny models (unused weights, defaults filled in) silenced in that process only."""
    import warnings

    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    return check_architecture(model_type)


def run_matrix(model_types: Iterable[str], workers: int = 2, on_verdict: Callable[[Verdict], None] | None = None) -> list[Verdict]:
    """The verdicts of ``model_types``, checked in ``workers`` fresh processes (spawned: each imports only the
    model code its architectures need, and nothing one check leaves behind reaches another), in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    names = list(model_types)
    verdicts = []
    with ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        for verdict in pool.map(check_quietly, names, chunksize=2):
            verdicts.append(verdict)
            if on_verdict is not None:
                on_verdict(verdict)
    return verdicts


def load_cached(path: Path) -> dict[str, Verdict]:
    try:
        rows = json.loads(path.read_text())
        return {row["model_type"]: Verdict(**row) for row in rows}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def save_cached(path: Path, verdicts: Iterable[Verdict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps([verdict.as_row() for verdict in verdicts], indent=1))
    staging.replace(path)


__all__ = [
    "CAPTURED",
    "FAILED",
    "NOT_BUILT",
    "OUT_OF_SCOPE",
    "STATUSES",
    "Verdict",
    "check_architecture",
    "check_quietly",
    "image_text_to_text_architectures",
    "matrix_names",
    "run_matrix",
]
