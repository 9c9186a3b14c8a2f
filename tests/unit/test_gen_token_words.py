"""Generated tokens to words (``part_tables.gen_tokens_table``) with a byte-fallback tokenizer: a character written as
several byte tokens decodes, cut between them, as one U+FFFD per byte, longer than the answer's text there."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from attnwh.extract.benchmarks.objects import ObjectAnnotation
from attnwh.extract.benchmarks.registry import Sample
from attnwh.extract.benchmarks.toy_shapes import CAPTION_VOCABULARY
from attnwh.extract.part_tables import gen_tokens_table


def _llama_style_tokenizer() -> PreTrainedTokenizerFast:
    """Metaspace pieces with <0xNN> byte fallback and the decoder of LLaMA-2's fast tokenizer (LLaVA-1.5's)."""
    pieces = ["▁A", "▁circle", "▁square", "▁and", "."] + [f"<0x{byte:02X}>" for byte in range(256)]
    vocabulary = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(piece, -1.0) for piece in pieces]
    tokenizer = Tokenizer(models.Unigram(vocabulary, unk_id=0, byte_fallback=True))
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_an_object_word_after_a_character_of_byte_tokens_starts_at_its_own_token():
    tokenizer = _llama_style_tokenizer()
    emoji = [f"<0x{byte:02X}>" for byte in "🙂".encode()]  # four byte tokens
    tokens = ["▁A", "▁circle", *emoji, "▁square", ".", "</s>"]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.decode(ids[:3], skip_special_tokens=True) == "A circle\ufffd"  # longer than the answer's text there
    sample = Sample(key="k", question="q", load_image=None, category="caption", parser="free_text", objects=ObjectAnnotation(("circle",), ("square",), CAPTION_VOCABULARY))
    rows = gen_tokens_table("r", 0, ids, [tokenizer.eos_token_id], tokenizer, sample).to_pylist()
    by_token = [(row["token_text"], row["word"], row["word_start"], row["object_status"]) for row in rows]
    assert by_token == [
        ("▁A", "A", True, None),
        ("▁circle", "circle", True, "grounded"),
        *((byte, None, None, None) for byte in emoji),  # the emoji is no word
        ("▁square", "square", True, "hallucinated"),  # was given to the emoji's second byte token
        (".", None, None, None),
        ("</s>", None, None, None),
    ]
