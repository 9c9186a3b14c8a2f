"""The capture session: what one call records of the attention rows it sees.

The attention function registered with transformers (``extract.forward``) shows the active call's
observer, a ``CaptureSession`` while ``capture_session`` is entered, the last query row of every layer
as the layer saw it (after interventions such as pruning). The session computes
``softmax(q·Kᵀ·scale + mask)`` for the captured query rows only, reduces them to statistics on the
device in fp32, and keeps the rows (fp32; the warehouse stores them as float16). Full attention
matrices are never materialised.

Queries: ``prompt`` is the last prompt position (forward pass 0, the prefill); ``gen1`` is the first
generated token (forward pass 1, the first decode step); ``gen`` is every forward pass of generation:
step ``t`` is the row of pass ``t``, the one that produced generated token ``t`` (0-based: step 0 is the
``prompt`` row, step 1 the ``gen1`` row). A ``gen`` step is reduced to statistics (and, with the lens, to
the rank of the token it produced at every layer) as soon as its pass ends, so that memory does not grow
with the answer's length beyond those few numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from attnwh.extract.forward import forward_call
from attnwh.extract.lens import LensResult
from attnwh.extract.segments import with_generated
from attnwh.extract.stats import STAT_NAMES, row_statistics

QUERY_STEPS = {"prompt": 0, "gen1": 1}  # query name -> forward pass whose last row it is
GEN = "gen"  # every generated position: one step per forward pass of generation
CAPTURE_QUERIES = (*QUERY_STEPS, GEN)


def last_query_rows(
    query: torch.Tensor,  # [batch, head, query, head_dim]
    key: torch.Tensor,  # [batch, kv_head, key, head_dim]
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    sinks: torch.Tensor | None = None,  # [head] learned sink logits (extract.forward._sdpa)
    softcap: float | None = None,  # attention-logit soft-capping (Gemma 2: extract.forward._softcapped)
) -> torch.Tensor:  # [batch, head, key] fp32
    """Attention probabilities of the last query position, in fp32, without repeating KV heads (with
    attention sinks, over the keys only: the sink's share is left out, as eager attention leaves it)."""
    batch, n_heads, _, head_dim = query.shape
    n_kv_heads = key.shape[1]
    scale = scaling if scaling is not None else head_dim**-0.5
    q = query[:, :, -1, :].float().reshape(batch, n_kv_heads, n_heads // n_kv_heads, head_dim)
    scores = torch.matmul(q, key.float().transpose(-1, -2)).reshape(batch, n_heads, -1) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask_row = attention_mask[:, :, -1, : scores.shape[-1]]  # [batch, 1 or head, key]
        if mask_row.dtype == torch.bool:
            scores = scores.masked_fill(~mask_row, float("-inf"))
        else:
            scores = scores + mask_row.float()
    if sinks is not None:
        sink = sinks.float().reshape(1, n_heads, 1).expand(batch, n_heads, 1)
        return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.softmax(scores, dim=-1)


@dataclass
class CaptureSpec:
    """What to capture: which queries, and whether to keep the raw rows."""

    queries: tuple[str, ...] = ("prompt", "gen1")
    rows: bool = True
    lens: bool = True  # keep each layer's hidden state at the captured positions (logit lens)
    gen_rows: bool = False  # keep the raw rows of every generated step too (``gen``; float16 on the CPU, step by step)

    def __post_init__(self) -> None:
        unknown = [name for name in self.queries if name not in CAPTURE_QUERIES]
        if not self.queries:
            raise ValueError(f"--queries needs at least one of {', '.join(CAPTURE_QUERIES)}")
        if unknown:
            raise ValueError(f"unknown capture queries {unknown}; choose from {', '.join(CAPTURE_QUERIES)}")
        if len(set(self.queries)) != len(self.queries):
            raise ValueError(f"capture queries repeat: {', '.join(self.queries)}")
        if self.gen_rows and GEN not in self.queries:
            raise ValueError("--gen-rows keeps the rows of every generated step: it needs gen among the queries")

    @property
    def fixed_queries(self) -> tuple[str, ...]:
        """The queries at one fixed forward pass each (``prompt``, ``gen1``): a row per sample, layer and head."""
        return tuple(name for name in self.queries if name in QUERY_STEPS)

    @property
    def every_step(self) -> bool:
        """Whether every generated position is captured (``gen``)."""
        return GEN in self.queries

    @property
    def forward_passes_needed(self) -> int:
        return max((QUERY_STEPS[name] for name in self.fixed_queries), default=0) + 1


@dataclass
class CaptureSession:
    """What one batch captured: statistics and rows per query and layer, on the model's device."""

    spec: CaptureSpec
    segments: torch.Tensor  # [batch, prompt_position] segment codes
    n_layers: int  # attention layers
    n_decoder_layers: int | None = None  # decoder layers (the logit lens's); more than n_layers in a hybrid model
    region: torch.Tensor | None = None  # [batch, prompt_position] bool: image positions in the question's boxes
    lens_of: Callable[[torch.Tensor], LensResult] | None = None  # hidden [n + 1, rows, hidden] -> the lens (``gen`` steps)
    step: int = -1  # index of the current forward pass
    rows: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)  # query -> layer -> [batch, head, key] fp32
    hidden: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)  # query -> 0..n_layers -> [batch, hidden]
    gen_statistics: list[torch.Tensor] = field(default_factory=list)  # per step [layer, batch, head, stat] on the device
    gen_lens: list[LensResult] = field(default_factory=list)  # per step: the lens of the token that step produced
    gen_incomplete: list[int] = field(default_factory=list)  # steps that did not see every layer
    gen_rows: list[torch.Tensor] = field(default_factory=list)  # per step [layer, batch, head, key] float16 on the CPU (``gen_rows``)

    def __post_init__(self) -> None:
        self._query_at_step = {QUERY_STEPS[name]: name for name in self.spec.fixed_queries}
        self._segments_at_step = {QUERY_STEPS[name]: with_generated(self.segments, QUERY_STEPS[name]) for name in self.spec.fixed_queries}
        self._region_at_step = {step: self._region(step) for step in self._segments_at_step}
        for name in self.spec.fixed_queries:
            self.rows[name] = [None] * self.n_layers
            self.hidden[name] = [None] * ((self.n_decoder_layers or self.n_layers) + 1)
        self._step_rows: list[torch.Tensor | None] = []
        self._step_hidden: list[torch.Tensor | None] = []
        if self.spec.every_step and self.spec.lens and self.lens_of is None:
            raise ValueError("the lens of every generated step needs lens_of")

    def _region(self, step: int) -> torch.Tensor | None:
        return None if self.region is None else torch.nn.functional.pad(self.region, (0, step))

    def begin_forward(self) -> None:
        self.end_step()
        self.step += 1
        if self.spec.every_step:
            self._step_rows = [None] * self.n_layers
            self._step_hidden = [None] * ((self.n_decoder_layers or self.n_layers) + 1) if self.spec.lens else []

    def end_step(self) -> None:
        """Reduce the ``gen`` step whose pass just ended (when one is open): its statistics for every layer in one
        batch of tensor operations, and the lens of the token it produced. Called by the next pass and at the end."""
        if not self.spec.every_step or not self._step_rows:
            return
        step_rows, step_hidden = self._step_rows, self._step_hidden
        self._step_rows, self._step_hidden = [], []
        if any(row is None for row in step_rows) or any(h is None for h in step_hidden):
            self.gen_incomplete.append(self.step)
            return
        stacked = torch.stack(step_rows)
        self.gen_statistics.append(self._reduce(stacked, with_generated(self.segments, self.step), self._region(self.step)))
        if self.spec.gen_rows:
            self.gen_rows.append(stacked.to(torch.float16).cpu())
        if step_hidden:
            self.gen_lens.append(self.lens_of(torch.stack(step_hidden)))

    def observe(self, layer: int, query, key, attention_mask, scaling, sinks=None, softcap=None) -> None:
        name = self._query_at_step.get(self.step)
        if name is None and not self.spec.every_step:
            return
        rows = last_query_rows(query, key, attention_mask, scaling, sinks, softcap)
        n_positions = self.segments.shape[1] + self.step
        missing = n_positions - rows.shape[-1]
        if missing > 0:
            # a sliding-window layer's cache holds only the last keys: the earlier ones get exactly 0
            rows = torch.nn.functional.pad(rows, (missing, 0))
        elif missing < 0:
            raise RuntimeError(f"layer {layer} saw {rows.shape[-1]} keys, more than the {n_positions} positions of the sequence")
        if name is not None:
            self.rows[name][layer] = rows  # statistics are reduced for all layers at once, after generation
        if self.spec.every_step:
            self._step_rows[layer] = rows

    def observe_hidden(self, index: int, hidden: torch.Tensor) -> None:
        """``index`` 0: the input of the first decoder layer (embeddings); i + 1: the output of layer i (before the final norm)."""
        name = self._query_at_step.get(self.step)
        if name is None and not self.spec.every_step:
            return
        # a copy, not a view: a view would keep the layer's whole [batch, position, hidden]
        # output alive until the batch ends (measured: +125 MiB peak at a 658-token prompt)
        last = hidden[:, -1].detach().clone()
        if name is not None:
            self.hidden[name][index] = last
        if self.spec.every_step and self.spec.lens:
            self._step_hidden[index] = last

    def step_final_hidden(self) -> torch.Tensor | None:
        """The open ``gen`` step's last decoder-layer output at its position ([batch, hidden], before the final
        norm), once the step's forward pass has run; None without every step's lens."""
        return self._step_hidden[-1] if self._step_hidden else None

    def complete(self) -> bool:
        self.end_step()
        rows = all(r is not None for layers in self.rows.values() for r in layers)
        hidden = not self.spec.lens or all(h is not None for layers in self.hidden.values() for h in layers)
        return rows and hidden and not self.gen_incomplete

    def stacked_hidden(self) -> dict[str, torch.Tensor]:  # query -> [n_layers + 1, batch, hidden] on the device
        return {name: torch.stack(layers) for name, layers in self.hidden.items() if layers[0] is not None}

    def _reduce(self, rows: torch.Tensor, segments: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
        """[layer, batch, head, key] rows -> [layer, batch, head, stat], one reduction for every layer."""
        n_layers, batch = rows.shape[:2]
        region = region.repeat(n_layers, 1) if region is not None else None
        stats = row_statistics(rows.reshape(n_layers * batch, *rows.shape[2:]), segments.repeat(n_layers, 1), region)
        return stats.reshape(n_layers, batch, *stats.shape[1:])

    def stacked_statistics(self) -> dict[str, torch.Tensor]:  # query -> [layer, batch, head, stat] on CPU
        """Statistics of every layer, reduced in one batch of tensor operations per query (on the device, fp32).

        One reduction over [layer × batch, head, key] instead of one per layer: on small models the
        per-layer launches cost more than the arithmetic (measured: 1.6× plain generation on the toy).
        """
        result = {}
        for name, layers in self.rows.items():
            step = QUERY_STEPS[name]
            result[name] = self._reduce(torch.stack(layers), self._segments_at_step[step], self._region_at_step[step]).cpu()
        return result

    def stacked_gen_statistics(self) -> torch.Tensor | None:  # [step, layer, batch, head, stat] on CPU
        """The statistics of every ``gen`` step (None without ``gen``)."""
        self.end_step()
        if not self.spec.every_step or not self.gen_statistics:
            return None
        return torch.stack(self.gen_statistics).cpu()

    def stacked_rows(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:  # query -> [layer, batch, head, key] on CPU
        """Rows per query (when the spec keeps rows), converted to ``dtype`` on the device before the transfer."""
        if not self.spec.rows:
            return {}
        return {name: torch.stack(layers).to(dtype).cpu() for name, layers in self.rows.items() if layers[0] is not None}


@contextmanager
def capture_session(
    text_model: torch.nn.Module,
    attention_modules: list[torch.nn.Module],
    spec: CaptureSpec,
    segments: torch.Tensor,
    region: torch.Tensor | None = None,
    decoder_layers: list[torch.nn.Module] | None = None,
    layer_edits=(),
    lens_of: Callable[[torch.Tensor], LensResult] | None = None,
) -> Iterator[CaptureSession]:
    """Record the captured queries of every forward pass of ``text_model`` this thread runs inside the block.

    ``attention_modules[i]`` is attention layer i's module, ``decoder_layers`` every decoder layer (the
    logit lens reads their outputs; a hybrid model has more decoder layers than attention layers); ``layer_edits`` are interventions bound to this batch
    (``extract.forward``), active in the same call.
    """
    if spec.lens and (decoder_layers is None or len(decoder_layers) < len(attention_modules)):
        raise ValueError("the logit lens needs the decoder layers")
    session = CaptureSession(
        spec=spec, segments=segments, n_layers=len(attention_modules), n_decoder_layers=len(decoder_layers or attention_modules), region=region, lens_of=lens_of
    )
    with forward_call(text_model, attention_modules, decoder_layers or [], layer_edits, session, spec.lens):
        yield session


__all__ = ["CAPTURE_QUERIES", "GEN", "STAT_NAMES", "CaptureSpec", "CaptureSession", "capture_session", "last_query_rows"]
