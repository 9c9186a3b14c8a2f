"""Generation with the capture session: one left-padded batch in, answers, first-step logits and the
logit lens out. Shared by extraction and masking (and anything else that runs a model over a batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from attnwh.extract.benchmarks.templates import LETTERS
from attnwh.extract.capture import QUERY_STEPS, CaptureSession, CaptureSpec, capture_session
from attnwh.extract.forward import ACTIVE_CALL, BatchView, Intervention, forward_call
from attnwh.extract.lens import HeadTransform, LensResult, head_logits, head_transforms, logit_lens, matching_transform, without_probabilities
from attnwh.extract.models import LoadedModel
from attnwh.extract.segments import prompt_segments


def processor_images(loaded: LoadedModel, images: list) -> list:
    """The ``images`` argument of the processor for one image per prompt (nested per prompt where the family's processor wants it)."""
    return [[image] for image in images] if loaded.spec.family.nested_images else list(images)


def encode_batch(loaded: LoadedModel, images: list, prompts: list[str], device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Processor output for one left-padded batch, on the model's device (or ``device``); float tensors in the model's dtype.

    Everything the processor returns goes to the model (``image_sizes``, ``image_grid_thw``,
    ``token_type_ids``, ``mm_token_type_ids``, ...): families need different extras.
    """
    encoded = loaded.processor(images=processor_images(loaded, images), text=prompts, return_tensors="pt", padding=True)
    target = loaded.device if device is None else device
    return {key: value.to(target, dtype=loaded.dtype if value.is_floating_point() else None) for key, value in encoded.items() if isinstance(value, torch.Tensor)}


@dataclass
class Generation:
    answers: list[list[int]]  # generated token ids per row, cut at the first EOS and at max_new_tokens
    steps: list[list[int]]  # per row, the token each forward pass produced: the answer and the EOS that ended it (if any)
    first_logits: torch.Tensor  # [batch, vocab] fp32 on CPU: the logits at the answer position
    lens: dict[str, LensResult]  # per captured query, when the capture keeps hidden states
    second_logits: torch.Tensor | None = None  # [batch, vocab] fp32 on CPU: the next pass's (gen1's position), when it ran


# how far the lens's last-layer probabilities may be from the model's own under the transform that matches them
# (fp32: the same operations; half precision: the model rounds its logits before it transforms them)
LENS_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
LENS_TOLERANCE_HALF = 0.1


def batch_view(loaded: LoadedModel, encoded: dict[str, torch.Tensor]) -> BatchView:
    """What interventions are told of the model and of one encoded batch."""
    info = loaded.info
    segments = prompt_segments(encoded["input_ids"], encoded["attention_mask"], loaded.spec.image_token_ids)
    return BatchView(info["n_layers"], info["n_heads"], info["n_kv_heads"], segments, encoded["attention_mask"], encoded)


@contextmanager
def _bound(loaded: LoadedModel, encoded: dict[str, torch.Tensor], interventions: Sequence[Intervention]) -> Iterator[None]:
    """No gradients, and ``interventions`` bound to this batch and active for the calls inside."""
    parts = loaded.parts
    view = batch_view(loaded, encoded)
    bound = [intervention.bind(view) for intervention in interventions]
    with torch.inference_mode(), forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, bound):
        yield


def forward_with(loaded: LoadedModel, encoded: dict[str, torch.Tensor], interventions: Sequence[Intervention] = ()):
    """One plain forward pass (no generation) with ``interventions`` active; returns the model's output."""
    with _bound(loaded, encoded, interventions):
        return loaded.model(**encoded)


def prefill_with(loaded: LoadedModel, encoded: dict[str, torch.Tensor], interventions: Sequence[Intervention] = ()) -> None:
    """The prompt's prefill as ``generate`` runs it, with ``interventions`` bound to this batch: for keys and values
    that another generation's pass reads (``image_swap.BaselineKV``). A plain forward (``forward_with``) numbers a
    left-padded row's positions from its first pad, ``generate`` from its first real token (and a model may number
    them its own way: Qwen2-VL's 3-D positions), so keys of the two are rotated at positions that differ by the row's
    padding; one step of ``generate`` is its prefill."""
    with _bound(loaded, encoded, interventions):
        loaded.model.generate(**encoded, max_new_tokens=1, do_sample=False, num_beams=1, pad_token_id=loaded.pad_token_id, eos_token_id=None)


def generate_with_capture(
    loaded: LoadedModel,
    encoded: dict[str, torch.Tensor],
    capture: CaptureSpec | None,
    max_new_tokens: int,
    region: torch.Tensor | None = None,
    interventions: Sequence[Intervention] = (),
):
    """Greedy generation, with the capture session active (unless ``capture`` is None) and
    ``interventions`` (head masks, KV pruning, ...) bound to this batch and active for this call only.
    Returns (generation, session or None, segments).

    Generation runs at least as many forward passes as the captured queries need (``gen1`` needs the
    decode step of the first generated token, even when that token is EOS), so ``generate`` is not
    told the EOS tokens; a stopping criterion ends rows at EOS instead, and answers are cut at the
    first EOS and at ``max_new_tokens``.
    """
    parts = loaded.parts
    view = batch_view(loaded, encoded)
    segments = view.segments
    passes = capture.forward_passes_needed if capture is not None else 1
    bound = [intervention.bind(view) for intervention in interventions]
    text_model, modules, layers = parts.text_model, parts.attention_modules, parts.decoder_layers
    transforms = head_transforms(loaded.spec.final_logit_softcapping, loaded.spec.logit_scales)
    if capture is not None:
        lens_of = partial(logit_lens, norm=parts.final_norm, lm_head=parts.lm_head, transform=transforms[0]) if capture.lens else None
        active = capture_session(text_model, modules, capture, segments, region, layers, bound, lens_of)
    else:
        active = forward_call(text_model, modules, layers, bound)
    stop = StopRows(encoded["input_ids"].shape[1], loaded.eos_token_ids, passes)
    with torch.inference_mode(), active as entered:
        calibration = LensCalibration(loaded, entered, transforms) if capture is not None and capture.lens and capture.every_step else None
        generation = generate(loaded, encoded, max_new_tokens, stop, calibration)
    session = entered if capture is not None else None
    if session is not None and not session.complete():
        raise RuntimeError("capture did not see every layer of every captured query")
    if session is not None and capture.lens:
        norm, lm_head = parts.final_norm, parts.lm_head
        hidden = session.stacked_hidden()
        matched = calibration is not None and calibration.ran  # every step's lens: matched at its first step already
        transform = calibration.transform if matched else lens_transform(loaded, hidden, generation, transforms)
        generation.lens = {name: logit_lens(states, norm, lm_head, transform or transforms[0]) for name, states in hidden.items()}
        if transform is None:
            generation.lens = {name: without_probabilities(result) for name, result in generation.lens.items()}
        if not matched and transform != transforms[0]:  # every step's lens (if any) ran under the configured transform
            session.gen_lens[:] = [without_probabilities(result) for result in session.gen_lens]
    return generation, session, segments


class LensCalibration:
    """Matches the lens of every generated step to the model before the first step's lens runs: as the logits
    processor of the call, it sees the first step's scores (the model's logits, after the processors of its
    generation config, if any) while that step's last hidden state is open in the capture session, and sets the
    session's lens to the transform that reproduces them (``extract.lens.matching_transform``), or to ranks only."""

    def __init__(self, loaded: LoadedModel, session: CaptureSession, transforms: list[HeadTransform]):
        self.loaded, self.session, self.transforms, self.ran = loaded, session, transforms, False
        self.transform: HeadTransform | None = None  # what the first step matched (None: none did)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        hidden = self.session.step_final_hidden()
        if not self.ran and hidden is not None:
            self.ran = True
            parts, tolerance = self.loaded.parts, LENS_TOLERANCE.get(self.loaded.dtype, LENS_TOLERANCE_HALF)
            self.transform = transform = matching_transform(head_logits(hidden, parts.final_norm, parts.lm_head), scores, self.transforms, tolerance)
            lens = partial(logit_lens, norm=parts.final_norm, lm_head=parts.lm_head, transform=transform or self.transforms[0])
            self.session.lens_of = lens if transform is not None else (lambda states: without_probabilities(lens(states)))
        return scores


def lens_transform(loaded: LoadedModel, hidden: dict[str, torch.Tensor], generation: Generation, transforms: list[HeadTransform]) -> HeadTransform | None:
    """What the model does to ``lm_head``'s logits, as this batch shows it (``extract.lens.matching_transform``): the
    last layer's lens at the prompt's or gen1's position against the model's own logits there (the configured
    transform where neither is captured). None: no known transform does (the lens keeps its ranks, not its
    probabilities)."""
    tolerance = LENS_TOLERANCE.get(loaded.dtype, LENS_TOLERANCE_HALF)
    model_logits = {0: generation.first_logits, 1: generation.second_logits}
    for name, step in QUERY_STEPS.items():
        if name in hidden and model_logits.get(step) is not None:
            raw = head_logits(hidden[name][-1], loaded.parts.final_norm, loaded.parts.lm_head)
            return matching_transform(raw, model_logits[step], transforms, tolerance)
    return transforms[0]


class StopRows:
    """Ends a row at EOS once the forward passes a capture needs have run, or once its answer is decided
    (``deciders``: per row, whether the text so far fixes what the row's parser reads from the answer)."""

    def __init__(self, prompt_length: int, eos_token_ids: Sequence[int], passes_needed: int = 1, tokenizer=None, deciders: Sequence | None = None):
        self.prompt_length, self.eos_token_ids, self.passes_needed = prompt_length, tuple(eos_token_ids), passes_needed
        self.tokenizer, self.deciders = tokenizer, deciders
        self.decided_at: list[int | None] = [None] * len(deciders or ())

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=input_ids.device)
        finished = torch.isin(generated, eos).any(dim=1) & (generated.shape[1] >= self.passes_needed)
        if self.deciders:
            for row, decide in enumerate(self.deciders):
                if self.decided_at[row] is None and not bool(finished[row]):
                    if decide(self.tokenizer.decode(generated[row].tolist(), skip_special_tokens=True)):
                        self.decided_at[row] = generated.shape[1]
            finished = finished | torch.tensor([at is not None for at in self.decided_at], device=finished.device)
        return finished


def generate(loaded: LoadedModel, inputs: dict, max_new_tokens: int, stop: StopRows, calibration: LensCalibration | None = None) -> Generation:
    """Greedy ``generate`` over ``inputs`` (the processor's output, or with ``mm_encoder_outputs`` in place of
    the pixels) in the calling context's forward call; answers cut at the first EOS, at ``max_new_tokens``
    and where ``stop`` found them decided (``calibration``: matches every step's lens to the model's logits)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    limit = max(max_new_tokens, stop.passes_needed)
    with torch.inference_mode(), _room_reserved(limit):
        output = loaded.model.generate(
            **inputs,
            max_new_tokens=limit,
            do_sample=False,
            num_beams=1,
            pad_token_id=loaded.pad_token_id,
            eos_token_id=None,
            stopping_criteria=StoppingCriteriaList([stop]),
            logits_processor=LogitsProcessorList([calibration] if calibration is not None else []),
            output_logits=True,
            return_dict_in_generate=True,
        )
    end = set(loaded.eos_token_ids)
    answers, steps = [], []
    for index, row in enumerate(output.sequences[:, stop.prompt_length :].tolist()):
        decided = stop.decided_at[index] if index < len(stop.decided_at) else None
        row = row[: min(max_new_tokens, decided or max_new_tokens)]
        cut = next((i for i, token in enumerate(row) if token in end), len(row))
        answers.append(row[:cut])
        steps.append(row[: cut + 1])
    second = output.logits[1].float().cpu() if len(output.logits) > 1 else None
    return Generation(answers, steps, output.logits[0].float().cpu(), {}, second)


@contextmanager
def _room_reserved(limit: int) -> Iterator[None]:
    """For the generation in the block: its cache's decode steps write into room reserved for ``limit`` tokens
    (``packed_cache.ReservedLayer``), set on the calling context's forward call and cleared after."""
    call = ACTIVE_CALL.get()
    if call is not None:
        call.kv_room = limit
    try:
        yield
    finally:
        if call is not None:
            call.kv_room = None


def letter_token_ids(tokenizer) -> list[torch.Tensor]:
    """Per option letter, the ids of the single tokens that spell it at the start of an answer (``B``, ``▁B``)."""
    ids = []
    for letter in LETTERS:
        candidates = {tokenizer.convert_tokens_to_ids(letter)}
        for text in (letter, " " + letter):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1:
                candidates.add(encoded[0])
        candidates.discard(tokenizer.unk_token_id)
        candidates.discard(None)
        ids.append(torch.tensor(sorted(candidates), dtype=torch.long))
    return ids
