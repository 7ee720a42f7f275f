"""Grapheme-to-phoneme with phonemizer's espeak-ng backend, exactly as Amphion's VALL-E does.

Amphion (`text/g2p_module.py` `G2PModule`, used by `processors/phone_extractor.py`; modified from
lifeiteng/vall-e `valle/data/tokenizer.py`) phonemizes with

    EspeakBackend(language, preserve_punctuation=True, with_stress=False,
                  punctuation_marks=Punctuation.default_marks(), tie=False,
                  language_switch="keep-flags", words_mismatch="ignore")
    separator = Separator(word="_", syllable="-", phone="|")

(with_stress is **False** in both Amphion and lifeiteng: their released symbol tables contain no
stress marks), replaces curly double quotes by `"` first, and turns the phonemized string into a
list by splitting words on `_`, taking `re.findall(r"\\w+|[^\\w\\s]", word)` minus the `|`
separators, and putting a `_` token between words. We reproduce that, so phone sequences (and
hence ids) match what Amphion's checkpoints were trained on.

One text is phonemized per backend call: phonemizer's punctuation-preserving path can shift
chunks between neighbouring lines when a list is phonemized at once (seen with abbreviations and
numbers), and per-text calls cost ~0.3 ms anyway.
"""

from __future__ import annotations

import re

WORD_SEP, SYLLABLE_SEP, PHONE_SEP = "_", "-", "|"
WITH_STRESS = False
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_backends: dict[str, object] = {}


class G2PError(RuntimeError):
    """espeak-ng / phonemizer is missing or the language is unknown."""


def _backend(language: str):
    if language not in _backends:
        try:
            from phonemizer.backend import EspeakBackend
        except ImportError as e:
            raise G2PError(f"phonemizer is not installed ({e}); run 'make install'") from None
        import logging

        quiet = logging.getLogger("phonemizer.g2p")  # "words count mismatch" warnings
        quiet.setLevel(logging.ERROR)
        try:
            _backends[language] = EspeakBackend(
                language,
                preserve_punctuation=True,
                with_stress=WITH_STRESS,
                tie=False,
                language_switch="keep-flags",
                words_mismatch="ignore",
                logger=quiet,
            )
        except RuntimeError as e:  # espeak-ng library missing or language not supported
            raise G2PError(
                f"cannot start espeak-ng for language {language!r}: {e}. Install espeak-ng "
                "(tools/install_system_deps.sh) and check preprocess.phone_language."
            ) from None
    return _backends[language]


def g2p_version(language: str = "en-us") -> str:
    """Backend identity for fingerprints (phonemizer + espeak-ng versions, settings)."""
    import phonemizer

    version = ".".join(str(v) for v in _backend(language).version())
    return f"phonemizer-{phonemizer.__version__}+espeak-ng-{version}+stress-{WITH_STRESS}"


def _to_phones(phonemized: str) -> list[str]:
    # Amphion's G2PModule.to_list: every word's tokens followed by "_", the last "_" dropped.
    phones: list[str] = []
    for word in phonemized.split(WORD_SEP):
        phones.extend([t for t in _TOKEN_RE.findall(word) if t != PHONE_SEP] + [WORD_SEP])
    return phones[:-1]


def phonemize(texts: list[str], language: str = "en-us") -> list[list[str]]:
    """Phones of each text (word boundaries `_` and punctuation kept, no BOS/EOS).

    An empty or whitespace-only text gives an empty list; callers decide what that means.
    """
    from phonemizer.separator import Separator

    backend = _backend(language)
    separator = Separator(word=WORD_SEP, syllable=SYLLABLE_SEP, phone=PHONE_SEP)
    out = []
    for text in texts:
        text = text.replace("\u201d", '"').replace("\u201c", '"').strip()
        if not text:
            out.append([])
            continue
        result = backend.phonemize([text], separator=separator, strip=True, njobs=1)
        out.append(_to_phones(result[0]) if result else [])
    return out


def has_speech_phones(phones: list[str]) -> bool:
    """True when the sequence holds at least one real phone (not only `_` and punctuation)."""
    return any(p[0].isalnum() for p in phones)  # "_" and punctuation are not alphanumeric
