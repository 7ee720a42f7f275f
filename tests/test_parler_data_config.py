"""utils/config_parler.py: typed sections, base_config inheritance, errors naming key and file."""

from __future__ import annotations

import pytest

from utils.config_loader import ConfigError
from utils.config_parler import corpus_kind, load_parler_config


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_sections_inherit_and_type(tmp_path):
    write(tmp_path / "base.json", "{preprocess: {shard_size: 7, max_duration: 20}}")
    cfg = load_parler_config(
        write(
            tmp_path / "c.json",
            '// json5\n{base_config: "base.json", dataset: ["expresso", "custom_a"],'
            ' dataset_path: {expresso: "E", custom_a: "a.txt"},'
            ' preprocess: {max_duration: 12, codec: "random_init"},'
            ' model: {pretrained: "some/folder"}}',
        )
    )
    assert (cfg.preprocess.shard_size, cfg.preprocess.max_duration) == (7, 12.0)
    assert cfg.preprocess.codec == "random_init" and cfg.model.pretrained == "some/folder"
    assert cfg.preprocess.expresso_speaker_names["ex04"] == "Talia"
    assert [corpus_kind(n) for n in ("libritts_r", "expresso_x", "custom", "vctk")] == [
        "libritts", "expresso", "custom", None]  # fmt: skip


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "{preprocess: {shard_sise: 3}}",
            r"c\.json: unknown key 'preprocess\.shard_sise'.*shard_size",
        ),
        (
            '{preprocess: {min_duration: "1"}}',
            r"c\.json: key 'preprocess\.min_duration': expected number",
        ),
        ('{preprocess: {annotate: "some"}}', r"key 'preprocess\.annotate': must be one of"),
        ('{dataset: ["vctk"], dataset_path: {vctk: "v"}}', r"key 'dataset': unknown corpus 'vctk'"),
        ('{dataset: ["custom"]}', r"key 'dataset_path': no entry for corpus 'custom'"),
    ],
)
def test_bad_keys_name_key_and_file(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_parler_config(write(tmp_path / "c.json", text))
