"""k2 symbol tables, the Amphion/lifeiteng phone -> id mapping, and G2P matching Amphion."""

from __future__ import annotations

import re

import pytest

from text.g2p import has_speech_phones, phonemize
from text.symbol_table import SymbolTable, SymbolTableError, TextTokenizer, UnknownPhoneError


def test_ids_follow_amphion_text_token_collator(tmp_path):
    # ids in the file are NOT the model ids: Amphion uses ["<pad>", "<bos>", "<eos>"] +
    # sorted(SymbolTable.symbols), and .symbols includes "<eps>" (sorted by code point).
    path = tmp_path / "symbols.dict"
    path.write_text("<eps> 0\nb 1\na 2\n, 3\n_ 4\nə 5\n", encoding="utf-8")
    tok = TextTokenizer.from_file(path)
    # sorted: "," (0x2c) < "<eps>" (0x3c) < "_" (0x5f) < "a" < "b" < "ə"
    assert tok.idx2token == ["<pad>", "<bos>", "<eos>", ",", "<eps>", "_", "a", "b", "ə"]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.encode(["a", "_", "b", ","]) == [1, 6, 5, 7, 3, 2]
    assert tok.encode(["ə"]) == [1, 8, 2]
    assert tok.vocab_size == 9
    assert tok.decode([1, 6, 2]) == ["<bos>", "a", "<eos>"]


def test_eps_is_added_when_missing_and_unknown_phone_raises(tmp_path):
    path = tmp_path / "s.dict"
    path.write_text("x 1\ny 2\n", encoding="utf-8")
    tok = TextTokenizer.from_file(path)
    assert "<eps>" in tok.table and tok.token2idx["<eps>"] == 3
    with pytest.raises(UnknownPhoneError) as err:
        tok.encode(["x", "q"])
    assert err.value.phone == "q" and "q" in str(err.value)
    assert tok.unknown_phones(["q", "x", "q", "r"]) == ["q", "r"]


def test_table_roundtrip_k2_format(tmp_path):
    table = SymbolTable.from_symbols({"t", "ə", ",", "_", "aɪ"})
    path = table.to_file(tmp_path / "symbols.dict")
    assert path.read_text(encoding="utf-8") == "<eps> 0\n, 1\n_ 2\naɪ 3\nt 4\nə 5\n"
    assert SymbolTable.from_file(path) == table
    assert [p.name for p in tmp_path.iterdir()] == ["symbols.dict"]


@pytest.mark.parametrize(
    "content, where",
    [("a 1\nb\n", ":2:"), ("a 1\na 2\n", ":2:"), ("a 0\n", "id 0"), ("a x\n", ":1:")],
)
def test_malformed_tables_name_the_line(tmp_path, content, where):
    path = tmp_path / "bad.dict"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SymbolTableError, match=re.escape(where)):
        SymbolTable.from_file(path)


def _amphion_reference(text: str) -> list[str]:
    """Amphion's G2PModule (text/g2p_module.py) with its defaults, written out independently."""
    from phonemizer.backend import EspeakBackend
    from phonemizer.separator import Separator

    backend = EspeakBackend(
        "en-us",
        preserve_punctuation=True,
        with_stress=False,
        tie=False,
        language_switch="keep-flags",
        words_mismatch="ignore",
    )
    text = text.replace("\u201d", '"').replace("\u201c", '"')
    sep = Separator(word="_", syllable="-", phone="|")
    phonemized = backend.phonemize([text.strip()], separator=sep, strip=True, njobs=1)[0]
    fields = []
    for word in phonemized.split("_"):
        pp = re.findall(r"\w+|[^\w\s]", word, re.UNICODE)
        fields.extend([p for p in pp if p != "|"] + ["_"])
    return fields[:-1]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! This is a test.",
        "\u201cQuoted,\u201d she said; then: 42 apples?",
        "Mr. Smith's third-place finish (really) surprised everyone.",
    ],
)
def test_phonemize_matches_amphion_g2p(text):
    phones = phonemize([text])[0]
    assert phones == _amphion_reference(text)
    assert "_" in phones and not any("ˈ" in p or "ˌ" in p for p in phones)  # no stress marks
    assert has_speech_phones(phones)


def test_phonemize_keeps_punctuation_and_word_boundaries_and_order():
    hello, empty, dots, world = phonemize(["Hello, there.", "  ", "...", "world"])
    assert hello[-1] == "." and "," in hello and hello.count("_") == 1
    assert empty == [] and not has_speech_phones(empty)
    assert not has_speech_phones(dots)
    assert "_" not in world and has_speech_phones(world)
