"""Train the tiny toy LLaVA on toy-shapes, so that its attention statistics mean something.

Two stages, both on the ``train`` split (fresh items every step; indices are unbounded):

1. the vision tower learns, through auxiliary linear heads on its patch features, which shape and
   which colour covers each patch (or background); then it is frozen;
2. the projector and the language model, re-initialised at a scale that suits their width, learn to
   answer and to describe: every step's batch holds ``BATCH_SIZE`` questions (the loss on the answer
   token, ``yes`` / ``no`` or a letter ``A``..``D``, and on the ``</s>`` after it, so that generation
   stops) and ``CAPTION_BATCH`` caption items of ``toy-shapes-caption`` (the loss on every token of the
   reference caption, "a red circle and a blue square .", and on the ``</s>`` after it).

Prompts are built exactly as attnwh builds them at inference (chat template, ``processor(...)``
with left padding), so batched inference sees what training saw.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnwh.extract.toy import builder, shapes
from attnwh.extract.toy.builder import TinyLlavaSpec

# 4 text layers × 8 heads (multi-head, no GQA): 32 heads, so that top-vs-random head masking means something.
# The vision tower is deeper and wider than the builder's default (2 × 32): that one tells circles from
# squares in only ~60% of patches after 1000 steps; 4 × 64 reaches ~99% in 2000 steps (~50 s).
TRAINED_SPEC = TinyLlavaSpec(n_layers=4, n_heads=8, n_kv_heads=8, hidden_size=64, vision_layers=4, vision_hidden=64)
# the toy zoo: three scales, as the study compares 3.8B, 7B and 13B models; wider as they grow (head_dim 8 throughout),
# the same vision tower, the same data and schedule
TRAINED_SPECS = {
    "small": TRAINED_SPEC,
    "medium": replace(TRAINED_SPEC, n_layers=6, n_heads=12, n_kv_heads=12, hidden_size=96),
    "large": replace(TRAINED_SPEC, n_layers=8, n_heads=16, n_kv_heads=16, hidden_size=128),
}

VISION_STEPS = 2000
LANGUAGE_STEPS = 3000  # 100% held-out accuracy on both question kinds; 6000 gives no more
BATCH_SIZE = 32  # question items per step (vision steps: scenes per step)
CAPTION_BATCH = 16  # caption items per language step, in the same batch as the questions
CAPTION_TOKENS_PER_TERM = 4  # the caption loss: summed over a caption's tokens, divided by this (see ``train_language``)
CAPTION_NEW_TOKENS = 32  # evaluation: a reference caption is at most 12 tokens, then ``</s>``
LEARNING_RATE = 2e-3
WARMUP_STEPS = 100
MIN_PATCH_PIXELS = 8  # a patch shows a shape when at least this many of its pixels are the shape's
EVAL_ITEMS = 256


def prompt_text(processor, question: str) -> str:
    """The prompt attnwh renders for a toy question (chat template with generation prompt)."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def encode(processor, items: list[shapes.Item] | list[shapes.CaptionItem], images: list | None = None) -> dict[str, torch.Tensor]:
    """Left-padded model inputs for ``items``, built as attnwh builds them at inference."""
    images = images if images is not None else [shapes.render(item.scene) for item in items]
    texts = [prompt_text(processor, item.question) for item in items]
    return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))


class CachedEncoder:
    """:func:`encode` made cheap for training (the processor took ~20% of a step); same tensors.

    Toy questions are few (84 distinct), so each question's expanded prompt ids come from the
    processor once and are cached; rows are left-padded as the processor pads them. Pixel values
    are one rescale + normalise of the stacked images, used only where that matches the image
    processor on a probe image (no resize or crop to do), else the image processor makes them.
    """

    def __init__(self, processor):
        self.processor = processor
        self.pad_id = processor.tokenizer.pad_token_id
        self.prompt_ids: dict[str, list[int]] = {}
        image_processor = processor.image_processor
        self.scale = image_processor.rescale_factor
        self.mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        probe = [shapes.render(shapes.make_item(shapes.SPLIT_SEEDS["train"], 1).scene)]
        reference = image_processor(probe, return_tensors="pt")["pixel_values"]
        fast = self._normalise(probe)
        self.fast_pixels = fast.shape == reference.shape and torch.allclose(fast, reference, atol=1e-5)

    def _normalise(self, images: list) -> torch.Tensor:
        pixels = torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images])).permute(0, 3, 1, 2)
        return (pixels.float() * self.scale - self.mean) / self.std

    def pixel_values(self, images: list) -> torch.Tensor:
        if self.fast_pixels:
            return self._normalise(images)
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def prompt(self, item: shapes.Item | shapes.CaptionItem, image) -> list[int]:
        """The expanded prompt ids of ``item``'s question (from the processor, once per question)."""
        if item.question not in self.prompt_ids:
            self.prompt_ids[item.question] = encode(self.processor, [item], [image])["input_ids"][0].tolist()
        return self.prompt_ids[item.question]

    def __call__(self, items: list, images: list | None = None, targets: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded inputs; with ``targets``, each row is its prompt and then its target ids (the whole row left-padded)."""
        images = images if images is not None else [shapes.render(item.scene) for item in items]
        rows = [self.prompt(item, image) for item, image in zip(items, images)]
        if targets is not None:
            rows = [prompt + target for prompt, target in zip(rows, targets)]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": self.pixel_values(images)}


def patch_labels(scene: tuple[shapes.Placed, ...], patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch (row-major), the index+1 of the shape and of the colour covering it; 0 is background."""
    grid = shapes.IMAGE_SIZE // patch_size
    shape_labels = torch.zeros(grid * grid, dtype=torch.long)
    colour_labels = torch.zeros(grid * grid, dtype=torch.long)
    background = np.asarray(shapes.render(()))
    for placed in scene:  # shapes sit in distinct grid cells: they never overlap
        mask = (np.asarray(shapes.render((placed,))) != background).any(axis=-1)
        covered = mask.reshape(grid, patch_size, grid, patch_size).sum(axis=(1, 3)).reshape(-1)
        hit = torch.from_numpy(covered >= MIN_PATCH_PIXELS)
        shape_labels[hit] = shapes.SHAPES.index(placed.shape) + 1
        colour_labels[hit] = list(shapes.COLOURS).index(placed.colour) + 1
    return shape_labels, colour_labels


def reinitialise_text_side(model, generator: torch.Generator) -> None:
    """Re-draw the projector's and the language model's weights at a scale that suits a tiny width.

    The builder's configs keep the Hugging Face default (normal, std 0.02), made for widths near
    1000: at width 64 attention logits start near zero and training sits on the chance plateau for
    thousands of steps. Here linear weights get std ``fan_in ** -0.5`` and embeddings std 1.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("model.vision_tower"):
                continue
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)


def _train_items(start: int, count: int) -> list[shapes.Item]:
    return [shapes.make_item(shapes.SPLIT_SEEDS["train"], index) for index in range(start, start + count)]


def _caption_items(split: str, start: int, count: int) -> list[shapes.CaptionItem]:
    return [shapes.make_caption_item(shapes.SPLIT_SEEDS[split], index) for index in range(start, start + count)]


def caption_target(tokenizer, item: shapes.CaptionItem) -> list[int]:
    """The ids the model learns to generate for a caption item: its reference caption, then ``</s>``."""
    return [*tokenizer(" " + item.caption, add_special_tokens=False)["input_ids"], builder.EOS_ID]


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to a tenth of the peak rate."""

    def factor(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain_vision(model, encoder: CachedEncoder, spec: TinyLlavaSpec, steps: int, log: Callable[[str], None]) -> float:
    """Teach the vision tower which shape and colour covers each patch; returns the last batch's patch accuracy."""
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    shape_head = torch.nn.Linear(width, len(shapes.SHAPES) + 1)
    colour_head = torch.nn.Linear(width, len(shapes.COLOURS) + 1)
    parameters = [*tower.parameters(), *shape_head.parameters(), *colour_head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)
    scheduler = _schedule(optimizer, steps)
    accuracy = 0.0
    for step in range(steps):
        items = _train_items(step * BATCH_SIZE, BATCH_SIZE)
        pixels = encoder.pixel_values([shapes.render(item.scene) for item in items])
        labels = [patch_labels(item.scene, spec.patch_size) for item in items]
        shape_target = torch.stack([shape for shape, _ in labels]).reshape(-1)
        colour_target = torch.stack([colour for _, colour in labels]).reshape(-1)
        # the features LLaVA projects: the tower's last hidden state without the class token
        features = tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:].reshape(-1, width)
        shape_logits, colour_logits = shape_head(features), colour_head(features)
        loss = F.cross_entropy(shape_logits, shape_target) + F.cross_entropy(colour_logits, colour_target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 250 == 0 or step == steps - 1:
            right = (shape_logits.argmax(-1) == shape_target) & (colour_logits.argmax(-1) == colour_target)
            accuracy = right.float().mean().item()
            log(f"vision step {step}: loss {loss.item():.4f}, patch accuracy {accuracy:.3f}")
    return accuracy


def train_language(model, encoder: CachedEncoder, steps: int, first_index: int, log: Callable[[str], None], caption_batch: int = CAPTION_BATCH) -> float:
    """Train projector + language model on answers and captions, each followed by ``</s>``; returns the final loss.

    A step's batch is ``BATCH_SIZE`` question items (the next ones from ``first_index``) and ``caption_batch``
    caption items (the next ones of their own stream), one forward pass. Each row is its prompt, as attnwh
    encodes it, then its target (answer or caption, then ``</s>``), the whole row left-padded: every target
    ends at the right edge, so the last ``longest target + 1`` logits cover them all (padding, and the
    positions of shorter rows' prompts, are left out of the loss). The loss is the questions' (answer
    cross-entropy + ``</s>`` cross-entropy, each the mean over the question items, as before captions were
    added) plus the captions' (cross-entropy summed over each caption's tokens and its ``</s>``, averaged over
    the caption items, divided by ``CAPTION_TOKENS_PER_TERM``: about two terms for a two-shape caption).
    """
    tokenizer = encoder.processor.tokenizer
    answer_ids = {word: tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no", *shapes.LETTERS)}
    parameters = [p for name, p in model.named_parameters() if not name.startswith("model.vision_tower.")]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE)
    scheduler = _schedule(optimizer, steps)
    recent: list[float] = []
    for step in range(steps):
        questions = _train_items(first_index + step * BATCH_SIZE, BATCH_SIZE)
        captions = _caption_items("train", step * caption_batch, caption_batch)
        targets = [[answer_ids[item.gold], builder.EOS_ID] for item in questions] + [caption_target(tokenizer, item) for item in captions]
        inputs = encoder([*questions, *captions], targets=targets)
        longest = max(map(len, targets))
        labels = torch.full((len(targets), longest), -100, dtype=torch.long)
        for row, target in enumerate(targets):
            labels[row, longest - len(target) :] = torch.tensor(target)
        # logits at positions -(longest + 1) .. -2 predict the tokens at -longest .. -1
        logits = model(**inputs, logits_to_keep=longest + 1).logits[:, :-1]
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none").view(labels.shape)
        n_questions = len(questions)
        loss = per_token[:n_questions].sum() / n_questions  # answer + </s>, each a mean over the question items
        if captions:
            loss = loss + per_token[n_questions:].sum() / (len(captions) * CAPTION_TOKENS_PER_TERM)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        recent = [*recent[-49:], loss.item()]
        if step % 500 == 0 or step == steps - 1:
            log(f"language step {step}: loss {sum(recent) / len(recent):.4f} (mean of last {len(recent)})")
    return sum(recent) / len(recent)


@torch.inference_mode()
def evaluate(model, processor, split: str = "validation", n_items: int = EVAL_ITEMS, batch_size: int = 32) -> dict[str, float]:
    """Greedy answers on the first ``n_items`` of ``split``: the questions (``max_new_tokens=2``): accuracy per
    kind and EOS rate; the caption items (``CAPTION_NEW_TOKENS``): the share of exact reference captions, the share
    that end with ``</s>``, and AMBER's CHAIR, Cover, Hal and Cog in percent from the benchmark's object matcher."""
    from attnwh.extract.benchmarks.objects import ObjectAnnotation, amber_metrics
    from attnwh.extract.benchmarks.parsers import parse
    from attnwh.extract.benchmarks.toy_shapes import CAPTION_VOCABULARY

    tokenizer = processor.tokenizer
    right: dict[str, list[bool]] = {"presence": [], "colour": []}
    stopped = []
    for start in range(0, n_items, batch_size):
        items = [shapes.make_item(shapes.SPLIT_SEEDS[split], index) for index in range(start, min(n_items, start + batch_size))]
        inputs = encode(processor, items)
        output = model.generate(**inputs, max_new_tokens=2, do_sample=False)[:, inputs["input_ids"].shape[1] :]
        for item, row in zip(items, output.tolist()):
            text = tokenizer.decode(row[:1], skip_special_tokens=True).strip()
            parsed = parse("letter" if item.choices else "yes_no", text, item.choices)
            right[item.kind].append(parsed == item.gold)
            stopped.append(len(row) > 1 and row[1] == builder.EOS_ID)
    exact, caption_stopped, scores = [], [], []
    for start in range(0, n_items, batch_size):
        captions = _caption_items(split, start, min(n_items, start + batch_size) - start)
        inputs = encode(processor, captions)
        output = model.generate(**inputs, max_new_tokens=CAPTION_NEW_TOKENS, do_sample=False)[:, inputs["input_ids"].shape[1] :]
        for item, row in zip(captions, output.tolist()):
            end = row.index(builder.EOS_ID) if builder.EOS_ID in row else len(row)
            text = tokenizer.decode(row[:end], skip_special_tokens=True).strip()
            exact.append(text == item.caption)
            caption_stopped.append(end < len(row))
            scores.append(CAPTION_VOCABULARY.score(text, ObjectAnnotation(item.present, item.absent, CAPTION_VOCABULARY)))
    amber = amber_metrics(scores)
    return {
        "accuracy_yes_no": float(np.mean(right["presence"])),
        "accuracy_colour": float(np.mean(right["colour"])),
        "eos_rate": float(np.mean(stopped)),
        "caption_exact": float(np.mean(exact)),
        "caption_eos_rate": float(np.mean(caption_stopped)),
        **{f"caption_{name.lower()}": value for name, value in amber.items()},
    }


def train_toy(
    folder: Path,
    *,
    steps: int = LANGUAGE_STEPS,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    spec: TinyLlavaSpec | None = None,
    vision_steps: int = VISION_STEPS,
    eval_items: int = EVAL_ITEMS,
    size: str = "small",
    caption_batch: int = CAPTION_BATCH,
) -> dict:
    """Train a tiny LLaVA on toy-shapes and save model + processor into ``folder`` (atomically).

    ``steps`` counts language-model steps (after ``VISION_STEPS`` vision-tower steps). Deterministic
    from ``seed`` (the vision tower's initial weights from ``spec.seed``, which is ``seed``
    unless ``spec`` is given; ``size`` picks one of ``TRAINED_SPECS``; ``caption_batch`` caption items join
    each language step's questions, 0 for none). Returns metrics: held-out accuracies and caption metrics on
    the ``validation`` split (:func:`evaluate`), steps, seconds (training, without the evaluation and the
    save), final loss (the training loss of :func:`train_language`, mean of the last 50 steps).
    """
    log = log or (lambda message: None)
    spec = spec if spec is not None else replace(TRAINED_SPECS[size], seed=seed)
    if spec.image_size != shapes.IMAGE_SIZE or shapes.IMAGE_SIZE % spec.patch_size:
        raise ValueError(f"toy training needs image_size {shapes.IMAGE_SIZE} and a patch size dividing it; got {spec}")
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        started = time.perf_counter()
        processor = builder.build_processor(spec, shapes.caption_vocabulary())
        processor.tokenizer.padding_side = "left"
        model = builder.build_model(spec, vocab_size=len(processor.tokenizer))  # seeds torch with spec.seed
        torch.manual_seed(seed)
        reinitialise_text_side(model, torch.Generator().manual_seed(seed))
        model.train()
        encoder = CachedEncoder(processor)
        patch_accuracy = pretrain_vision(model, encoder, spec, vision_steps, log)
        model.model.vision_tower.requires_grad_(False)
        final_loss = train_language(model, encoder, steps, vision_steps * BATCH_SIZE, log, caption_batch)
        model.eval()
        seconds = time.perf_counter() - started
        metrics = evaluate(model, processor, n_items=eval_items)
        log(f"validation: {metrics}")
        builder.save_pretrained_atomically(folder, model, processor)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    return {
        **metrics,
        "vision_patch_accuracy": patch_accuracy,
        "vision_steps": vision_steps,
        "steps": steps,
        "caption_batch": caption_batch,
        "seconds": round(seconds, 1),
        "final_loss": final_loss,
        "seed": seed,
        "size": size,
        "spec": asdict(spec),
    }
