"""Typed json5 config machinery: reading, `base_config` inheritance, deep merge, strict typing.

The recipe-agnostic half of the config system (the VALL-E recipe's sections are in
`utils/config.py`; a recipe with its own config dataclass, e.g. TokTTS, uses this module alone):

* `load_raw_config(path)`: the json5 file and its `base_config` chain, merged deepest-base first,
  with the file that set each key;
* `build(cls, tree, source)`: a dataclass instance from a (merged) tree. An unknown key is an
  error naming the key, the file that set it and the closest valid key; a wrong type names the
  key, the file, the expected and the found type; then the instance's `validate()` runs, whose
  `check(ok, key, message)` calls become errors naming the key and its file.

A `base_config` path is looked up relative to the file that names it first and then, for Amphion
compatibility (`"base_config": "config/valle.json"`), relative to the repository root.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json5

from utils.fileio import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("config")


class ConfigError(ValueError):
    """A config file is wrong; the message names the file and the key."""


class RuleError(Exception):
    """A `validate()` rule failed (raised by `check`; `build` turns it into a ConfigError)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check(ok: bool, key: str, message: str) -> None:
    """In a config dataclass's `validate()`: unless `ok`, the field `key` is wrong because
    `message` (the error names the key with its section and the file that set it)."""
    if not ok:
        raise RuleError(key, message)


def check_corpora(names: list[str], known: Callable[[str], bool], use: str) -> None:
    """Every recipe's rule of its top-level `dataset` key: at least one corpus, each `known`
    (else the error says `use`: which names are)."""
    check(len(names) > 0, "dataset", "name at least one corpus")
    for name in names:
        check(known(name), "dataset", f"unknown corpus {name!r}: {use}")


# --------------------------------------------------------------------------------------------
# Reading and merging
# --------------------------------------------------------------------------------------------


def read_json5(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = json5.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid json5: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object {{...}}")
    return data


def _find_base(base: str, declaring_file: Path) -> Path:
    candidates = [declaring_file.parent / base, REPO_ROOT / base]
    if Path(base).is_absolute():
        candidates = [Path(base)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{declaring_file}: base_config {base!r} not found (looked at {tried})")


def merge_tree(dst: dict, src: dict, origin: dict, src_file: Path, prefix: tuple = ()) -> None:
    """Deep-merge src into dst; origin[(key path)] = file that set that key last."""
    for key, value in src.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge_tree(dst[key], value, origin, src_file, path)
        else:
            dst[key] = json.loads(json.dumps(value)) if isinstance(value, dict | list) else value
            origin[path] = src_file
            if isinstance(value, dict):
                for sub in _leaf_paths(value, path):
                    origin[sub] = src_file


def _leaf_paths(tree: dict, prefix: tuple) -> list[tuple]:
    out = []
    for key, value in tree.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out.extend(_leaf_paths(value, prefix + (key,)))
    return out


def load_raw_config(
    path: str | os.PathLike, overrides: dict | None = None
) -> tuple[dict, dict, list[Path]]:
    """Merged (not yet validated) tree, the key -> file origin map, and the files read.

    `overrides` (nested keys, e.g. from the command line) are merged last, their origin
    `<command line>`."""
    chain: list[Path] = []
    current = Path(path).resolve()
    if not current.is_file():
        raise ConfigError(f"config file not found: {path}")
    while True:
        if current in chain:
            cycle = " -> ".join(str(p) for p in chain + [current])
            raise ConfigError(f"base_config cycle: {cycle}")
        chain.append(current)
        base = read_json5(current).get("base_config")
        if base is None:
            break
        if not isinstance(base, str):
            raise ConfigError(f"{current}: base_config must be a string path")
        current = _find_base(base, current)
    merged: dict = {}
    origin: dict = {}
    for file in reversed(chain):
        data = read_json5(file)
        data.pop("base_config", None)
        merge_tree(merged, data, origin, file)
    if overrides:
        merge_tree(merged, overrides, origin, Path("<command line>"))
    return merged, origin, chain


# --------------------------------------------------------------------------------------------
# Typing
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


def found_name(value: Any) -> str:
    """How an error message shows a json value: its json type and (the start of) its text."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    names.update({list: "list", dict: "object", type(None): "null"})
    return f"{names.get(type(value), type(value).__name__)} {json.dumps(value)[:60]}"


def _coerce(value: Any, tp: Any) -> Any:
    """Return value checked against tp (ints are accepted for floats; nothing else converts)."""
    origin_tp = typing.get_origin(tp)
    if origin_tp in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option)
            except TypeError:
                pass
        raise TypeError(f"expected {_type_name(tp)}, found {found_name(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise TypeError(f"expected null, found {found_name(value)}")
    if origin_tp is list:
        if not isinstance(value, list):
            raise TypeError(f"expected {_type_name(tp)}, found {found_name(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp) for v in value]
    if origin_tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected {_type_name(tp)}, found {found_name(value)}")
        key_tp, val_tp = typing.get_args(tp)
        return {_coerce(k, key_tp): _coerce(v, val_tp) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and isinstance(value, bool):
        return value
    if tp in (int, str, float) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected {_type_name(tp)}, found {found_name(value)}")


# --------------------------------------------------------------------------------------------
# Building dataclasses
# --------------------------------------------------------------------------------------------

# A key-rule hook: called with (the built dataclass, its tree, the dotted-key prefix, the origin
# map, the default file) after typing and before validate(); e.g. the recipe's Amphion key tables.
KeyRules = typing.Callable[[Any, dict, tuple, dict, Path], None]


@dataclass
class _Context:
    origin: dict  # key path -> file that set it
    default_file: Path  # named when a key's file is not known
    key_rules: KeyRules | None

    def file_of(self, path: tuple) -> Path:
        return self.origin.get(path, self.default_file)


def _typed_fields(cls: type, tree: dict, ctx: _Context, prefix: tuple) -> dict:
    """The constructor arguments of cls from tree: every key known, every value typed."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in tree.items():
        path = prefix + (key,)
        file, dotted = ctx.file_of(path), ".".join(path)
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            valid = ", ".join(names)
            raise ConfigError(f"{file}: unknown key '{dotted}'{hint}. Valid keys here: {valid}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{file}: key '{dotted}': expected an object, found {found_name(value)}"
                )
            kwargs[key] = _build(tp, value, ctx, path)
            continue
        try:
            kwargs[key] = _coerce(value, tp)
        except TypeError as e:
            raise ConfigError(f"{file}: key '{dotted}': {e}") from None
    return kwargs


def _build(cls: type, tree: dict, ctx: _Context, prefix: tuple) -> Any:
    obj = cls(**_typed_fields(cls, tree, ctx, prefix))
    if ctx.key_rules is not None:
        ctx.key_rules(obj, tree, prefix, ctx.origin, ctx.default_file)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except RuleError as rule:
            path = prefix + (rule.key,)
            raise ConfigError(f"{ctx.file_of(path)}: key '{'.'.join(path)}': {rule}") from None
    return obj


def build(
    cls: type,
    tree: dict,
    source: str | os.PathLike = "<dict>",
    origin: dict | None = None,
    key_rules: KeyRules | None = None,
) -> Any:
    """A validated `cls` (a dataclass, sections nested as dataclass fields) from `tree`.

    `origin` maps key paths to the file that set them (`load_raw_config`); keys it does not
    know are blamed on `source`. `key_rules` runs on each (nested) instance before `validate()`.
    """
    return _build(cls, tree, _Context(origin or {}, Path(source), key_rules), ())


# --------------------------------------------------------------------------------------------
# Writing and paths
# --------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the fully resolved config as JSON, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    if extra:
        data.update(extra)
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def resolve_path(path: str | os.PathLike) -> Path:
    """A path from a config: absolute as given, relative ones relative to the repository root."""
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else (REPO_ROOT / path)
