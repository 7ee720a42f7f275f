"""English text normalisation and WER/CER counts.

Hypothesis and reference both go through Whisper's English normaliser
(`transformers.models.whisper.english_normalizer.EnglishTextNormalizer`: lower case, punctuation
removed, contractions and "mr." expanded, numbers spelled as digits), without its British-to-
American spelling table (that table ships with the Whisper tokenizer files), then jiwer counts
word edits (WER) and character edits (CER). Corpus-level WER = total edits / total reference
words, the convention of the VALL-E paper and of jiwer over a list.
"""

from __future__ import annotations

from functools import cache

import jiwer

NORMALISER = "whisper EnglishTextNormalizer (no spelling map)"


@cache
def _normaliser():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalise(text: str) -> str:
    return " ".join(_normaliser()(text).split())


def error_counts(reference: str, hypothesis: str) -> dict[str, int]:
    """Word and character edit counts of one normalised pair (reference must be non-empty)."""
    words = jiwer.process_words(reference, hypothesis)
    chars = jiwer.process_characters(reference, hypothesis)
    return {
        "wer_errors": words.substitutions + words.deletions + words.insertions,
        "wer_words": len(reference.split()),
        "cer_errors": chars.substitutions + chars.deletions + chars.insertions,
        "cer_chars": len(reference),
    }
