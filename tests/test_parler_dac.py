"""models/codec/dac.py: exact codes (equal to DacModel.encode alone), decode lengths, save/load,
special ids refused at decode, clear errors for missing / corrupt / offline sources."""

from __future__ import annotations

import logging

import huggingface_hub
import pytest
import torch

from models.codec.dac import CodecError, DacCodec


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    return DacCodec.random_init(num_codebooks=4, seed=3)


def wavs():
    g = torch.Generator().manual_seed(0)
    return [0.1 * torch.randn(n, generator=g) for n in (512 * 7, 512 * 7 + 100, 300)]


def test_encode_is_exact_and_batch_free(codec):
    w = wavs()
    codes = codec.encode(w)
    assert [c.shape for c in codes] == [(7, 4), (8, 4), (1, 4)]
    assert all(c.dtype == torch.long and 0 <= c.min() and c.max() < 1024 for c in codes)
    # Equal to DacModel.encode of the utterance alone, right-padded to a multiple of the hop.
    x = torch.nn.functional.pad(w[1], (0, 8 * 512 - w[1].numel()))[None, None]
    with torch.no_grad():
        ref = codec.model.encode(x, n_quantizers=4).audio_codes[0].t()
    assert torch.equal(codes[1], ref)
    assert all(torch.equal(a, b) for a, b in zip(codec.encode(w[::-1]), codes[::-1], strict=True))
    assert len({tuple(c.flatten().tolist()) for c in codes[:2]}) == 2


def test_decode_lengths_and_special_ids(codec):
    codes = codec.encode(wavs())
    out = codec.decode(codes)
    assert [o.numel() for o in out] == [7 * 512, 8 * 512, 512]
    assert all(torch.isfinite(o).all() for o in out)
    assert codec.decode([torch.zeros(0, 4, dtype=torch.long)])[0].numel() == 1
    for special in (1024, 1025, 1087):
        bad = codes[0].clone()
        bad[3, 2] = special
        with pytest.raises(CodecError, match="outside \\[0, 1024\\).*codec_frames"):
            codec.decode([bad])


def test_random_init_is_labelled_and_save_load_round_trip(tmp_path, codec, caplog):
    with caplog.at_level(logging.WARNING):
        again = DacCodec.random_init(num_codebooks=4, seed=3)
    assert "RANDOM-INIT DAC" in caplog.text and "MEANINGLESS" in caplog.text
    w = wavs()
    assert all(torch.equal(a, b) for a, b in zip(again.encode(w), codec.encode(w), strict=True))
    codec.save(tmp_path / "dac")
    loaded = DacCodec.load(tmp_path / "dac")
    assert loaded.is_random_init and loaded.num_codebooks == 4
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(w), codec.encode(w), strict=True))


def test_missing_corrupt_and_offline_sources(tmp_path, codec, monkeypatch):
    folder = codec.save(tmp_path / "dac")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:1000])
    with pytest.raises(CodecError, match="corrupt"):
        DacCodec.pretrained(str(folder), num_codebooks=4)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CodecError, match="model.safetensors not found"):
        DacCodec.pretrained(str(folder), num_codebooks=4)
    with pytest.raises(CodecError, match="dac.json: not a saved DAC codec"):
        DacCodec.load(tmp_path)

    def offline(repo_id, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CodecError, match="huggingface-cli download descript/dac_44khz"):
        DacCodec.pretrained()


def write_parler_folder(folder, codec, num_codebooks=4, random_init=True):
    """A Parler-TTS-layout folder holding only what the codec loader reads: config.json with an
    audio_encoder and the DAC under the package's names (audio_encoder.model.*)."""
    import json

    from safetensors.torch import save_file

    from models.codec.dac import PACKAGE_PREFIX, package_state_from_dac

    folder.mkdir(parents=True, exist_ok=True)
    enc = {"model_type": "dac_on_the_hub", "num_codebooks": num_codebooks, "codebook_size": 1024,
           "latent_dim": 32, "frame_rate": 86, "sampling_rate": 44100}  # fmt: skip
    cfg = {"model_type": "parler_tts", "audio_encoder": enc, "codectts_random_init": random_init}
    (folder / "config.json").write_text(json.dumps(cfg))
    state = {PACKAGE_PREFIX + k: v for k, v in package_state_from_dac(codec.model).items()}
    state["decoder.lm_heads.0.weight"] = torch.zeros(2, 2)  # other model tensors are ignored
    save_file(state, str(folder / "model.safetensors"))
    return state


def test_released_layout_dac_round_trip(tmp_path, codec):
    """Our DacModel saved under the parler-tts / descript names loads back with the same codes;
    the names are descript's (as transformers' DAC conversion script maps them)."""
    state = write_parler_folder(tmp_path / "parler", codec)
    p = "audio_encoder.model."
    ours = codec.model.state_dict()
    # descript layout: encoder.block.0 = first conv; block i (1..4) holds residual units 0..2
    # (each snake / conv / snake / conv) then snake .3 and strided conv .4; then snake, conv.
    assert torch.equal(state[p + "encoder.block.0.weight_v"], ours["encoder.conv1.weight"])
    assert torch.equal(
        state[p + "encoder.block.2.block.1.block.3.weight_v"],
        ours["encoder.block.1.res_unit2.conv2.weight"],
    )
    assert torch.equal(state[p + "encoder.block.5.alpha"], ours["encoder.snake1.alpha"])
    assert torch.equal(state[p + "decoder.model.1.block.1.weight_v"],
                       ours["decoder.block.0.conv_t1.weight"])  # fmt: skip
    assert torch.equal(
        state[p + "decoder.model.3.block.4.block.0.alpha"],
        ours["decoder.block.2.res_unit3.snake1.alpha"],
    )
    assert torch.equal(state[p + "decoder.model.6.bias"], ours["decoder.conv2.bias"])
    g = state[p + "quantizer.quantizers.1.in_proj.weight_g"]
    assert g.shape == (8, 1, 1)  # weight norm over dim 0

    loaded = DacCodec.from_parler_checkpoint(tmp_path / "parler")
    assert loaded.num_codebooks == 4 and loaded.is_random_init
    assert loaded.model.config.encoder_hidden_size == 4 and loaded.hop_length == 512
    for k, v in loaded.model.state_dict().items():
        assert torch.allclose(v, ours[k], atol=1e-6, rtol=1e-6), k
    w = wavs()
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(w), codec.encode(w), strict=True))


def test_released_layout_errors(tmp_path, codec):
    import json

    write_parler_folder(tmp_path / "p", codec)
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    from safetensors.torch import save_file

    save_file({"decoder.x": torch.zeros(1)}, str(tmp_path / "p" / "model.safetensors"))
    with pytest.raises(CodecError, match=r"holds no audio_encoder\.model\.\* \(DAC\) weights"):
        DacCodec.from_parler_checkpoint(tmp_path / "p")
    cfg["audio_encoder"]["model_type"] = "encodec"
    (tmp_path / "p" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="audio_encoder is 'encodec', not a DAC"):
        DacCodec.from_parler_checkpoint(tmp_path / "p")
    from models.codec.dac import dac_state_from_package

    with pytest.raises(CodecError, match=r"unknown tensors \['encoder.extra.weight'\]"):
        dac_state_from_package({"encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(CodecError, match="without its g/v partner"):
        dac_state_from_package({"encoder.block.0.weight_g": torch.zeros(1, 1, 1)})
