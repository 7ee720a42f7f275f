"""The optional TokTTS text normaliser (`preprocess.normalize_text`, off by default: TokTTS reads
raw characters, one character = one token).

On: Unicode NFKC (ligatures, full-width forms, non-breaking spaces -> their plain forms),
typographic quotes and dashes -> ASCII, every run of white space -> one space, stripped. Case,
digits and punctuation are kept (no number expansion: that would be a language-specific front
end). Stage 1 and inference apply the same function, so a model sees the same characters in
both.
"""

from __future__ import annotations

import re
import unicodedata

_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u2013": "-", "\u2014": "-", "\u2026": "..."})  # fmt: skip


def normalize_text(text: str) -> str:
    """'“Hello”\u00a0 world — again…' -> '"Hello" world - again...'."""
    text = unicodedata.normalize("NFKC", text).translate(_ASCII)
    return re.sub(r"\s+", " ", text).strip()
