"""Tiny tokenizers built locally (no hub is reachable), saved with the real ``save_pretrained``."""

from __future__ import annotations

import string
from pathlib import Path

WORDS = (
    "a an the of and in on with at by from to is cat dog fox bird horse red blue green white black "
    "golden photo painting portrait landscape city street night sunset sky tree forest river lake "
    "mountain sea beach snow rain astronaut robot woman man child dancing walking running flying "
    "cinematic detailed high quality"
).split()


def build_t5_tokenizer(dest: Path, *, model_max_length: int = 512) -> int:
    """Write a small T5 (sentencepiece-unigram style) tokenizer to ``dest``; returns its vocab size.

    Ids follow T5: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; every input ends with ``</s>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        pieces += [("\u2581" + c, -3.0), (c, -4.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=model_max_length,
    )
    fast.save_pretrained(dest)
    return len(fast)


def build_clip_tokenizer(dest: Path, *, model_max_length: int = 77) -> int:
    """Write a small CLIP (byte-level BPE) tokenizer to ``dest``; returns its vocab size.

    The vocabulary is every byte-level character, alone and as a word end (``a</w>``), plus
    the words of :data:`WORDS` merged whole, so any text tokenizes, common words to one token.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:  # merge left to right: one merge rule per step of the word
            merged = parts[0] + parts[1]
            rule = (parts[0], parts[1])
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(merged, len(vocab))
            parts = [merged] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.save_pretrained(dest)
    return len(tokenizer)
