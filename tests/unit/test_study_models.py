"""The study's models as `attnwh models` lists them: each one's prompt format is one its family takes."""

from __future__ import annotations

import pytest

from attnwh.extract.discovery import family_of
from attnwh.extract.study import BEYOND_LLAVA, STUDY_MODELS

MODEL_TYPES = {
    "LlavaForConditionalGeneration": "llava",
    "VipLlavaForConditionalGeneration": "vipllava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Gemma3ForConditionalGeneration": "gemma3",
}


@pytest.mark.parametrize("model", STUDY_MODELS + BEYOND_LLAVA, ids=lambda model: model.study_name)
def test_each_listed_prompt_format_fits_its_family(model):
    assert model.prompt_format in family_of(MODEL_TYPES[model.architecture]).prompt_formats


def test_vip_llava_is_listed_with_the_conversation_the_study_ran():
    """The study's scripts/pointQA-att.sh runs ViP-LLaVA without --conv-mode: LLaVA's default, llava_v1."""
    assert {model.prompt_format for model in STUDY_MODELS if model.architecture == "VipLlavaForConditionalGeneration"} == {"llava_v1"}
