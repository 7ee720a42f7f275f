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
