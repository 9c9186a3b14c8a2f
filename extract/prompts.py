"""Prompt formats: the conversation templates of the original checkpoints, or the model's own chat template.

A format is chosen with ``--prompt-format`` and recorded in the run fingerprint. ``{image}`` stands
for the processor's image placeholder (``<image>`` for LLaVA), which the processor expands into the
image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnwh.core.errors import ModelError, UsageError, first_line

LLAVA_SYSTEM = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions."


@dataclass(frozen=True)
class PromptFormat:
    name: str
    description: str
    template: str | None  # None: the processor's chat template

    def render(self, processor, question: str) -> str:
        if self.template is None:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            if not getattr(processor, "chat_template", None):
                raise UsageError("this model has no chat template; choose a --prompt-format")
            try:
                return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # noqa: BLE001  a template that does not parse or render (jinja2's errors, the template's own raise_exception)
                raise ModelError(f"the model's chat template does not render ({type(exc).__name__}: {first_line(exc)}); fix it or choose a --prompt-format") from exc
        placeholder = getattr(processor, "image_token", None)
        if placeholder is None:
            raise UsageError(f"prompt format {self.name} needs a processor with an image token; use chat_template")
        return self.template.format(image=placeholder, question=question)


FORMATS: dict[str, PromptFormat] = {
    fmt.name: fmt
    for fmt in (
        PromptFormat("chat_template", "the model's own chat template (processor.apply_chat_template)", None),
        PromptFormat(
            "llava_v1", "LLaVA v1 conversation with its system prompt (LLaVA-1.5 / 1.6 Vicuna, as the study ran them)", LLAVA_SYSTEM + " USER: {image}\n{question} ASSISTANT:"
        ),
        PromptFormat("vip_llava", "ViP-LLaVA conversation (###Human / ###Assistant)", LLAVA_SYSTEM + "###Human: {image}\n{question}###Assistant:"),
        PromptFormat(
            "llama3",
            "Llama-3 header format of the LLaVA Llama-3 checkpoints",
            "<|start_header_id|>user<|end_header_id|>\n\n{image}\n{question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        PromptFormat("phi3", "Phi-3 format of the LLaVA Phi-3 checkpoints", "<|user|>\n{image}\n{question}<|end|>\n<|assistant|>\n"),
        PromptFormat("mistral_instruct", "Mistral [INST] format (LLaVA-1.6 Mistral)", "[INST] {image}\n{question} [/INST]"),
    )
}


def get_format(name: str) -> PromptFormat:
    if name not in FORMATS:
        raise UsageError(f"unknown prompt format {name!r}; choose {', '.join(FORMATS)}")
    return FORMATS[name]
