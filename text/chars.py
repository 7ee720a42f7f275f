"""The TokTTS character table: one character = one token (no phonemizer).

In the text front-end layer because stage 1 (which writes ``chars.json``) and the model's
inference (which encodes texts with it) both use it; ``models.tts.toktts.model`` re-exports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from utils.fileio import atomic_write_text


class UnknownCharacterError(ValueError):
    """A text holds characters the model was not trained on; the message lists them."""


class CharTable:
    """Characters <-> ids. Id 0 is padding; characters get 1..N in table order.

    There is no <unk>: a character outside the table raises ``UnknownCharacterError`` naming it,
    because silently dropping or replacing it would make the model say something else.
    """

    FORMAT = "codectts-chars-1"

    def __init__(self, chars: list[str]):
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"character table entries must be single characters, got {bad[:5]}")
        if len(set(chars)) != len(chars):
            raise ValueError("character table entries must be unique")
        self.chars = list(chars)
        self.ids = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: list[str]) -> CharTable:
        """Every character of the texts, sorted by code point (deterministic)."""
        return cls(sorted({c for t in texts for c in t}))

    def __len__(self) -> int:
        """Embedding rows needed: the characters + padding."""
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.ids})
        if unknown:
            raise UnknownCharacterError(
                f"text {text!r} has characters not in the model's character table: "
                f"{', '.join(repr(c) for c in unknown)}; remove or replace them"
            )
        if not text:
            raise ValueError("empty text: nothing to say")
        return [self.ids[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if i != 0)

    def save(self, path: str | os.PathLike) -> Path:
        data = {"format": self.FORMAT, "pad_id": 0, "chars": self.chars}
        return atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTable:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the character table ({e})") from None
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ValueError(f"{path}: not a character table (expected format {cls.FORMAT!r})")
        try:
            return cls(data.get("chars"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
