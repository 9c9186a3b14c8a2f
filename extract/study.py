"""The nine models of the reference study and the Hugging Face-native checkpoints that correspond to them today."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyModel:
    study_name: str
    hf_id: str
    architecture: str
    prompt_format: str
    note: str = ""


# the study's scripts/pointQA-att.sh runs model_vqa_loader_vip_att.py without --conv-mode: LLaVA's default llava_v1
VIP_LLAVA_NOTE = "the study's PointQA script ran ViP-LLaVA in LLaVA's default llava_v1 conversation; vip_llava (###Human) is the model card's"

STUDY_MODELS: tuple[StudyModel, ...] = (
    StudyModel("LLaVA-1.5 7B (Vicuna)", "llava-hf/llava-1.5-7b-hf", "LlavaForConditionalGeneration", "llava_v1"),
    StudyModel("LLaVA-1.5 13B (Vicuna)", "llava-hf/llava-1.5-13b-hf", "LlavaForConditionalGeneration", "llava_v1"),
    StudyModel("LLaVA-1.6 Vicuna 7B", "llava-hf/llava-v1.6-vicuna-7b-hf", "LlavaNextForConditionalGeneration", "llava_v1"),
    StudyModel("LLaVA-1.6 Vicuna 13B", "llava-hf/llava-v1.6-vicuna-13b-hf", "LlavaNextForConditionalGeneration", "llava_v1"),
    StudyModel("LLaVA-1.6 Mistral 7B", "llava-hf/llava-v1.6-mistral-7b-hf", "LlavaNextForConditionalGeneration", "mistral_instruct"),
    StudyModel("ViP-LLaVA 7B", "llava-hf/vip-llava-7b-hf", "VipLlavaForConditionalGeneration", "llava_v1", VIP_LLAVA_NOTE),
    StudyModel("ViP-LLaVA 13B", "llava-hf/vip-llava-13b-hf", "VipLlavaForConditionalGeneration", "llava_v1", VIP_LLAVA_NOTE),
    StudyModel(
        "LLaVA-1.5 Llama-3 8B",
        "xtuner/llava-llama-3-8b-v1_1-transformers",
        "LlavaForConditionalGeneration",
        "llama3",
        "no HF-native conversion of the study's LLaVA++ checkpoint (MBZUAI/LLaVA-Meta-Llama-3-8B-Instruct); nearest HF-native one",
    ),
    StudyModel(
        "LLaVA-1.5 Phi-3 mini 3.8B",
        "xtuner/llava-phi-3-mini-hf",
        "LlavaForConditionalGeneration",
        "phi3",
        "no HF-native conversion of the study's LLaVA++ checkpoint (MBZUAI/LLaVA-Phi-3-mini-4k-instruct); nearest HF-native one",
    ),
)

BEYOND_LLAVA: tuple[StudyModel, ...] = (
    StudyModel("Qwen2.5-VL 7B", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2_5_VLForConditionalGeneration", "chat_template"),
    StudyModel("Qwen2-VL 7B", "Qwen/Qwen2-VL-7B-Instruct", "Qwen2VLForConditionalGeneration", "chat_template"),
    StudyModel("LLaVA-OneVision 7B", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "LlavaOnevisionForConditionalGeneration", "chat_template"),
    StudyModel("Gemma 3 4B", "google/gemma-3-4b-it", "Gemma3ForConditionalGeneration", "chat_template"),
)
