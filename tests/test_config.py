"""Config system: base_config inheritance, typed validation errors, shipped recipe configs."""

import json
import re
from pathlib import Path

import pytest

from utils.config import (
    FIXED,
    IGNORED,
    REPO_ROOT,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    resolve_path,
    save_config,
)

RECIPE = REPO_ROOT / "egs" / "tts" / "VALLE"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_base_config_is_resolved_against_the_declaring_file(tmp_path):
    write(tmp_path / "base" / "root.json", '{"train": {"max_epoch": 7, "batch_size": 3}}')
    write(
        tmp_path / "base" / "middle.json",
        '// comments are json5\n{base_config: "root.json", train: {batch_size: 5,},}',
    )
    child = write(
        tmp_path / "exp" / "child.json",
        '{"base_config": "../base/middle.json", "model": {"nhead": 2, "decoder_dim": 8}}',
    )
    cfg = load_config(child)
    assert cfg.train.max_epoch == 7  # from the deepest base
    assert cfg.train.batch_size == 5  # middle overrides root
    assert (cfg.model.nhead, cfg.model.decoder_dim) == (2, 8)  # child
    assert cfg.model.num_decoder_layers == 12  # dataclass default


def test_repository_root_base_config_like_amphion(tmp_path):
    child = write(tmp_path / "x.json", '{"base_config": "config/valle.json", "log_dir": "L"}')
    cfg = load_config(child)
    assert cfg.model.decoder_dim == 1024 and cfg.model.nhead == 16  # from config/valle.json
    assert cfg.log_dir == "L"


def test_missing_base_config_names_file_and_candidates(tmp_path):
    child = write(tmp_path / "x.json", '{"base_config": "nope.json"}')
    with pytest.raises(ConfigError, match=r"x\.json: base_config 'nope\.json' not found"):
        load_config(child)


def test_base_config_cycle_is_reported(tmp_path):
    write(tmp_path / "a.json", '{"base_config": "b.json"}')
    write(tmp_path / "b.json", '{"base_config": "a.json"}')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.json")


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    base = write(tmp_path / "base.json", '{"train": {"batch_size": 2}}')
    child = write(tmp_path / "child.json", '{"base_config": "base.json", "train": {"max_epok": 3}}')
    with pytest.raises(ConfigError) as err:
        load_config(child)
    msg = str(err.value)
    assert str(child) in msg and str(base) not in msg
    assert "train.max_epok" in msg and "did you mean max_epoch?" in msg


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.json", '{"model": {"n_head": 2}}')
    child = write(tmp_path / "child.json", '{"base_config": "base.json"}')
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert str(base) in str(err.value) and "did you mean nhead?" in str(err.value)


@pytest.mark.parametrize(
    "text, key, expected, found",
    [
        ('{"train": {"max_epoch": "10"}}', "train.max_epoch", "integer", 'string "10"'),
        ('{"model": {"norm_first": 1}}', "model.norm_first", "boolean", "integer 1"),
        ('{"train": {"batch_size": true}}', "train.batch_size", "integer", "boolean true"),
        ('{"dataset": "libritts"}', "dataset", "list[str]", "string"),
        ('{"preprocess": 3}', "preprocess", "object", "integer 3"),
    ],
)
def test_wrong_type_names_key_file_expected_and_found(tmp_path, text, key, expected, found):
    path = write(tmp_path / "c.json", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{key}'" in msg
    assert f"expected {expected}" in msg or f"expected an {expected}" in msg
    assert f"found {found}" in msg


def test_int_is_accepted_for_float_keys(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", '{"preprocess": {"max_duration": 20}}'))
    assert cfg.preprocess.max_duration == 20.0 and isinstance(cfg.preprocess.max_duration, float)


@pytest.mark.parametrize(
    "text, key, words",
    [
        ('{"preprocess": {"min_duration": 5, "max_duration": 3}}', "preprocess.max_duration",
         "greater than min_duration"),
        ('{"model": {"decoder_dim": 30, "nhead": 4}}', "model.nhead", "divisible"),
        ('{"model": {"prefix_mode": 3}}', "model.prefix_mode", "0, 1, 2, 4"),
        ('{"train": {"train_stage": 5}}', "train.train_stage", "AR"),
        ('{"train": {"mixed_precision": "fp8"}}', "train.mixed_precision", "bf16"),
        ('{"train": {"warmup_steps": 10, "total_training_steps": 5}}',
         "train.total_training_steps", "warmup_steps"),
        ('{"inference": {"top_p": 0}}', "inference.top_p", "(0, 1]"),
    ],
)  # fmt: skip
def test_cross_field_rules(tmp_path, text, key, words):
    path = write(tmp_path / "c.json", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)
    assert words in str(err.value)


def test_invalid_json5_names_file(tmp_path):
    path = write(tmp_path / "c.json", '{"train": {')
    with pytest.raises(ConfigError, match="not valid json5"):
        load_config(path)


def test_shipped_recipe_configs_load():
    cfg = load_config(RECIPE / "exp_config.json")
    assert cfg.dataset == ["libritts"] and cfg.train.use_dynamic_batchsize is True
    assert cfg.model.decoder_dim == 1024  # inherited from config/valle.json
    demo = load_config(RECIPE / "exp_config_demo.json")
    assert demo.model.decoder_dim < 256 and demo.preprocess.codec_pretrained is False
    assert resolve_path(demo.dataset_path["libritts"]).is_relative_to(REPO_ROOT)


def test_amphion_exp_config_keys_are_accepted_with_their_meaning(tmp_path):
    # Amphion's egs/tts/VALLE/exp_config.json, verbatim keys (json5 comments included).
    amphion = write(
        tmp_path / "exp_config.json",
        """{
    "base_config": "config/valle.json",
    "model_type": "VALLE",
    "dataset": ["libritts"],
    "dataset_path": {"libritts": "/data/LibriTTS"},
    "preprocess": {
        "extract_phone": true,
        "phone_extractor": "espeak", // phone_extractor: espeak
        "extract_acoustic_token": true,
        "use_phone": true,
        "use_acoustic_token": true,
        "processed_dir": "Amphion/data/",
        "sample_rate": 24000, // "Audio sampling rate."
        "codec_hop_size": 320, // "Hop size of the codec."
        "valid_file": "test.json" // validattion set
    },
    "model": {"prefix_mode": 0},
    "log_dir": "Amphion/ckpts/tts/valle",
    "train": {
        "batch_size": 4,
        "train_stage": 1,
        "max_epoch": 20,
        "use_dynamic_batchsize": true,
        "max_tokens": 4000,
        "max_sentences": 10
    }
}""",
    )
    cfg = load_config(amphion)
    assert cfg.dataset_path == {"libritts": "/data/LibriTTS"}
    assert cfg.preprocess.valid_file == "test.json" and cfg.preprocess.codec_hop_size == 320
    assert (cfg.train.max_tokens, cfg.train.max_sentences, cfg.train.train_stage) == (4000, 10, 1)
    assert resolve_path(cfg.log_dir) == REPO_ROOT / "Amphion/ckpts/tts/valle"
    model_keys = (
        '{"base_config": "config/valle.json", "model": {"text_token_num": 512,'
        '"audio_token_num": 1024, "decoder_dim": 1024, "nhead": 16, "num_decoder_layers": 12,'
        '"norm_first": true, "add_prenet": false, "prefix_mode": 0, "share_embedding": true,'
        '"nar_scale_factor": 1, "prepend_bos": false, "num_quantizers": 8}}'
    )
    cfg = load_config(write(tmp_path / "valle.json", model_keys))
    assert cfg.model.nar_scale_factor == 1.0 and cfg.model.num_quantizers == 8


def test_overrides_and_saved_config_round_trip(tmp_path):
    cfg = load_config(RECIPE / "exp_config_demo.json", overrides={"inference": {"top_k": 5}})
    assert cfg.inference.top_k == 5
    saved = save_config(cfg, tmp_path / "exp" / "config.json")
    data = json.loads(saved.read_text())
    assert data["inference"]["top_k"] == 5
    assert config_from_dict(data) == cfg
    assert not list(saved.parent.glob(".*tmp*"))  # written atomically, no temp file left


def test_override_with_wrong_type_names_command_line():
    with pytest.raises(ConfigError, match="<command line>.*inference.top_k"):
        load_config(RECIPE / "exp_config_demo.json", overrides={"inference": {"top_k": "x"}})


def test_defaults_validate():
    Config().validate()


def _section(dotted: str, value) -> str:
    """'train.ddp', False -> '{"train": {"ddp": false}}'"""
    *section, key = dotted.split(".")
    tree = {key: value}
    for name in reversed(section):
        tree = {name: tree}
    return json.dumps(tree)


@pytest.mark.parametrize(
    "key, changed, default",
    [
        ("preprocess.extract_phone", False, True),
        ("preprocess.extract_acoustic_token", False, True),
        ("train.ddp", False, True),
        ("train.log_epoch_step", 50, 1000),
    ],
)
def test_ignored_amphion_keys_warn_naming_key_file_and_reason(
    tmp_path, caplog, key, changed, default
):
    path = write(tmp_path / "c.json", _section(key, changed))
    with caplog.at_level("WARNING", logger="config"):
        load_config(path)
    (record,) = [r for r in caplog.records if r.name == "config"]
    message = record.getMessage()
    assert str(path) in message and f"'{key}'" in message and "is ignored: " in message
    assert IGNORED[key] in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="config"):
        load_config(write(tmp_path / "d.json", _section(key, default)))  # the default: silent
    assert not [r for r in caplog.records if r.name == "config"]


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("preprocess.sample_rate", 16000, "EnCodec 24 kHz"),
        ("preprocess.codec_hop_size", 240, "320 samples per frame"),
        ("preprocess.use_phone", False, "only text input"),
        ("preprocess.use_acoustic_token", False, "only training target"),
        ("task_type", "svc", "text-to-speech"),
        ("model_type", "NaturalSpeech2", "VALL-E"),
        ("model.audio_token_num", 512, "[0, 1024)"),
    ],
)
def test_keys_with_one_supported_value_reject_others_with_the_reason(tmp_path, key, value, words):
    path = write(tmp_path / "c.json", _section(key, value))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)
    assert words in str(err.value)


def test_every_config_key_acts_is_fixed_or_is_documented_as_ignored():
    """Each key is read by the code (outside utils/config.py, tests and benchmarks), or is a
    FIXED Amphion key (other values rejected), or an IGNORED one (README says so; it warns)."""
    import dataclasses

    from tools.config_reference import SECTIONS as REFERENCE_SECTIONS
    from tools.config_reference import TOKTTS as TOKTTS_SECTIONS
    from tools.config_reference import reference

    skip = ("utils/config.py", "tests/", "bench/", "tools/")
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for p in sorted(REPO_ROOT.rglob("*.py"))
        if ".venv" not in p.parts and not str(p.relative_to(REPO_ROOT)).startswith(skip)
    )
    rows: dict[str, str] = {}  # the first row of a key: VALL-E's (TokTTS's tables follow)
    for line in reference().splitlines():
        if line.startswith("| `"):
            rows.setdefault(line.split("`")[1], line)
    for section, cls in REFERENCE_SECTIONS:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in ("preprocess", "model", "train"):
                continue
            if f.name == "inference":
                continue
            key = f"{section}.{f.name}" if section else f.name
            if key in IGNORED:
                assert "ignored" in rows[key], key
            elif key in FIXED:
                assert f"must be {json.dumps(FIXED[key][0])}" in rows[key], key
            else:
                assert re.search(rf"\.{f.name}\b|[\"']{f.name}[\"']", code), f"{key} is never read"
    toktts_code = code.replace(Path(REPO_ROOT / "utils/toktts_config.py").read_text(), "")
    for section, cls in TOKTTS_SECTIONS:  # TokTTS's own sections: every key is read somewhere
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(f.type) and f.name not in ("model_type",):
                pattern = rf"\.{f.name}\b|[\"']{f.name}[\"']"
                assert re.search(pattern, toktts_code), f"TokTTS {section}.{f.name} is never read"
