"""Phone symbol table (k2 "symbol id" text format) and the phone -> id mapping of VALL-E.

File format (what Amphion and lifeiteng/vall-e write as `symbols.dict`): one `symbol id` pair per
line, sorted by id, the first line `<eps> 0`, then the phones with ids 1, 2, ... in sorted order.

The ids the model sees are NOT the ids in the file. Verified against Amphion's code
(`text/symbol_table.py`, `text/text_token_collation.py`, `processors/phone_extractor.py`,
copied from lifeiteng's `valle/data/collation.py`):

* `SymbolTable.from_file` keeps every line, and k2's `__post_init__` adds `<eps>` with id 0 even
  when absent; `SymbolTable.symbols` returns `sorted(_sym2id.keys())`, so **`<eps>` is part of the
  symbol list** and takes its plain code-point sorted place (after e.g. `,` `.` `!`, before
  letters and IPA characters).
* `get_text_token_collater` builds `TextTokenCollator(table.symbols, add_bos=True, add_eos=True)`:
  `unique_tokens = ["<pad>", "<bos>", "<eos>"] + sorted(symbols)` and
  `token2idx = {tok: i for i, tok in enumerate(unique_tokens)}`.
  So `<pad>` = 0, `<bos>` = 1, `<eos>` = 2 and phone k of the sorted list = k + 3.
* Amphion's stage 1 writes only phones (plus `<eps>`) into the file; pad/bos/eos are not in it.
  Should a file contain them anyway, the dict comprehension above lets the later (sorted)
  occurrence win and the list keeps its full length; we reproduce that exactly.
* Each sequence is `<bos> phones... <eos>`.

`TextTokenizer` reproduces this mapping, so a released `symbols.dict` yields the ids the
checkpoint was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

from utils.fileio import atomic_write_text

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
EPS = "<eps>"


class SymbolTableError(ValueError):
    """A symbols.dict file is malformed; the message names the file and line."""


class UnknownPhoneError(KeyError):
    """A phone is not in the symbol table (`.phone` holds it)."""

    def __init__(self, phone: str, table: str = ""):
        where = f" of {table}" if table else ""
        super().__init__(f"phone {phone!r} is not in the symbol table{where}")
        self.phone = phone

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class SymbolTable:
    """k2-style symbol <-> id table; `<eps>` always has id 0."""

    def __init__(self) -> None:
        self._sym2id: dict[str, int] = {EPS: 0}
        self._id2sym: dict[int, str] = {0: EPS}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SymbolTable:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SymbolTableError(f"{path}: cannot read symbol table ({e.strerror})") from None
        table = cls()
        table._sym2id.clear()
        table._id2sym.clear()
        for lineno, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise SymbolTableError(f"{path}:{lineno}: expected 'symbol id', got {line!r}")
            sym, idx = fields[0], int(fields[1])
            if sym in table._sym2id or idx in table._id2sym:
                raise SymbolTableError(f"{path}:{lineno}: duplicated symbol or id in {line!r}")
            table._sym2id[sym] = idx
            table._id2sym[idx] = sym
        if table._id2sym.get(0, EPS) != EPS:
            raise SymbolTableError(f"{path}: id 0 must be {EPS}, found {table._id2sym[0]!r}")
        table._sym2id.setdefault(EPS, 0)
        table._id2sym.setdefault(0, EPS)
        return table

    @classmethod
    def from_symbols(cls, symbols: set[str] | list[str]) -> SymbolTable:
        """A new table: `<eps> 0`, then the symbols in sorted order (what Amphion writes)."""
        table = cls()
        for sym in sorted(set(symbols)):
            table.add(sym)
        return table

    def add(self, symbol: str) -> int:
        if symbol in self._sym2id:
            return self._sym2id[symbol]
        if not symbol or any(c.isspace() for c in symbol):
            raise ValueError(f"symbol {symbol!r} is empty or contains whitespace")
        idx = max(self._id2sym) + 1
        self._sym2id[symbol] = idx
        self._id2sym[idx] = symbol
        return idx

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write `symbol id` lines sorted by id, atomically."""
        lines = "".join(f"{sym} {idx}\n" for idx, sym in sorted(self._id2sym.items()))
        return atomic_write_text(path, lines)

    @property
    def symbols(self) -> list[str]:
        """All symbols including `<eps>`, sorted by code point (k2 / Amphion `.symbols`)."""
        return sorted(self._sym2id)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self._sym2id

    def __len__(self) -> int:
        return len(self._sym2id)

    def __getitem__(self, symbol: str) -> int:
        return self._sym2id[symbol]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolTable) and self._sym2id == other._sym2id


class TextTokenizer:
    """Phones -> model ids with the Amphion / lifeiteng mapping (see the module docstring)."""

    def __init__(self, table: SymbolTable, source: str = ""):
        self.table = table
        self.source = source
        self.idx2token: list[str] = [PAD, BOS, EOS] + table.symbols
        self.token2idx: dict[str, int] = {tok: i for i, tok in enumerate(self.idx2token)}
        self.pad_id, self.bos_id, self.eos_id = (self.token2idx[t] for t in (PAD, BOS, EOS))

    @classmethod
    def from_file(cls, symbols_dict: str | os.PathLike) -> TextTokenizer:
        return cls(SymbolTable.from_file(symbols_dict), source=str(symbols_dict))

    @property
    def vocab_size(self) -> int:
        """Rows an embedding needs (= len of Amphion's `idx2token`)."""
        return len(self.idx2token)

    def unknown_phones(self, phones: list[str]) -> list[str]:
        """Phones of the sequence that the table does not know (in order, deduplicated)."""
        return list(dict.fromkeys(p for p in phones if p not in self.table))

    def encode(self, phones: list[str]) -> list[int]:
        """`<bos>` + phone ids + `<eos>`; an unknown phone raises UnknownPhoneError."""
        ids = [self.bos_id]
        for phone in phones:
            if phone not in self.table:
                raise UnknownPhoneError(phone, self.source)
            ids.append(self.token2idx[phone])
        ids.append(self.eos_id)
        return ids

    def decode(self, ids: list[int]) -> list[str]:
        """Ids -> tokens (special tokens included as their names)."""
        return [self.idx2token[i] for i in ids]
