"""CodecTokenizer: exact batched encoding, k-means init, save/load, weight sources, decode."""

from __future__ import annotations

import json
import math
import urllib.error

import pytest
import torch

from models.codec import encodec as enc
from models.codec.encodec import CodecError, CodecTokenizer


def _signal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 24000
    f0 = 100 + 300 * torch.rand(1, generator=g)
    return (0.3 * torch.sin(2 * math.pi * f0 * t) + 0.05 * torch.randn(n, generator=g)).float()


@pytest.fixture(scope="module")
def codec() -> CodecTokenizer:
    """Random-init codec with random (not k-means) codebooks: cheap and non-degenerate, so all
    8 code streams vary and a batching leak would show in any of them."""
    torch.set_num_threads(1)
    codec = CodecTokenizer.build(pretrained=False, seed=0)
    emb = torch.cat([e.t() for e in codec._encode_embeddings([_signal(24000, 0)])])
    g = torch.Generator().manual_seed(0)
    residual_scale = emb.std().item()
    for q, layer in enumerate(codec.model.quantizer.vq.layers[:8]):
        book = layer._codebook
        scale = residual_scale * (0.5**q)
        book.embed.data.copy_(scale * torch.randn(book.embed.shape, generator=g))
        book.inited.data.fill_(1.0)
    return codec


LENGTHS = [24000, 24001, 23999, 12345, 5120 + 17, 5119, 2241, 640, 321, 319, 1, 30000]


def _alone(codec: CodecTokenizer, wav: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        (codes, _scale), *rest = codec.model.encode(wav[None, None])
    assert not rest  # the 24 kHz model never splits into segments
    return codes[0].t()  # (frames, 8)


def test_codes_equal_encoding_each_utterance_alone(codec):
    wavs = [_signal(n, i + 1) for i, n in enumerate(LENGTHS)]
    varied = 0
    for wav, codes in zip(wavs, codec.encode(wavs), strict=True):  # CPU: one model, one by one
        assert codes.shape == (math.ceil(len(wav) / 320), 8)
        assert codes.dtype == torch.int64
        assert torch.equal(codes, _alone(codec, wav)), len(wav)
        varied += int(all(len(codes[:, q].unique()) > 1 for q in range(8)))
    assert varied >= 5  # every stream carries information in the long utterances


def test_batched_path_has_no_padding_leak(codec):
    """The padded-batch path (used on CUDA): every frame of every utterance equals encoding it
    alone up to float rounding (a padding leak is ~1e-3, see the next test); with one thread and
    a small batch the codes are identical here."""
    torch.set_num_threads(1)
    wavs = [_signal(n, i + 1) for i, n in enumerate(LENGTHS)]
    embs = codec._encode_embeddings(wavs)
    for wav, emb in zip(wavs, embs, strict=True):
        with torch.no_grad():
            alone = codec.model.encoder(wav[None, None])[0]
        assert emb.shape == alone.shape == (128, math.ceil(len(wav) / 320))
        assert (emb - alone).abs().max().item() < 1e-6, len(wav)
    same = sum(
        int(torch.equal(c, _alone(codec, w)))
        for w, c in zip(wavs, codec.encode(wavs, batched=True), strict=True)
    )
    assert same >= len(wavs) - 1


def test_zero_padding_alone_would_leak_into_the_last_frame(codec):
    """Why the tail recomputation exists: plain zero-padded batching changes codes."""
    wavs = [_signal(30000 + 17, 3), _signal(48000, 4)]
    with torch.no_grad():  # like encode(); grad mode takes other kernels (4e-8 differences)
        padded = torch.zeros(2, 1, 48000)
        padded[0, 0, : len(wavs[0])] = wavs[0]
        naive = codec.model.encoder(padded)[0, :, : math.ceil(len(wavs[0]) / 320)]
        alone = codec.model.encoder(wavs[0][None, None])[0]
    assert not torch.allclose(naive[:, -1], alone[:, -1], atol=1e-4)
    ours = codec._encode_embeddings(wavs)[0]
    assert (ours - alone).abs().max().item() < 1e-6


def test_random_init_codec_emits_zeros_until_kmeans_init_which_is_deterministic(tmp_path):
    torch.set_num_threads(1)
    wavs = [_signal(12000, 7), _signal(9000, 8)]
    a = CodecTokenizer.build(pretrained=False, seed=3)
    assert a.is_random_init and not a.is_initialized
    assert a.encode([wavs[0]])[0].abs().sum() == 0  # encodec's untouched kmeans_init codebooks
    a.kmeans_init_(wavs, seed=5)
    b = CodecTokenizer.build(pretrained=False, seed=3)
    b.kmeans_init_(wavs, seed=5)
    assert a.is_initialized
    assert a.source["kmeans_sha256"] == b.source["kmeans_sha256"]
    codes = a.encode(wavs)
    assert len(codes[0][:, 0].unique()) > 1
    assert torch.equal(codes[0], b.encode(wavs)[0])
    # saved with the processed data, reloaded bit for bit, flagged loudly
    a.save(tmp_path / "codec")
    meta = json.loads((tmp_path / "codec" / "codec.json").read_text())
    assert meta["source"] == "random_init" and "MEANINGLESS" in meta["warning"]
    with pytest.warns(UserWarning, match="RANDOM-INIT"):
        c = CodecTokenizer.from_processed_dir(tmp_path)
    assert c.is_random_init and c.num_quantizers == 8
    assert torch.equal(c.encode(wavs)[1], codes[1])
    # another seed gives another codec
    d = CodecTokenizer.build(pretrained=False, seed=4)
    d.kmeans_init_(wavs, seed=5)
    assert d.source["kmeans_sha256"] != a.source["kmeans_sha256"]


def test_saving_an_uninitialised_random_codec_is_refused(tmp_path):
    with pytest.raises(CodecError, match="kmeans_init_"):
        CodecTokenizer.build(pretrained=False, seed=0).save(tmp_path)


def test_local_checkpoint_loads_without_network(tmp_path, codec, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    state = {k: v.clone() for k, v in codec.model.state_dict().items()}
    path = tmp_path / "encodec_24khz-local.th"
    torch.save(state, path)
    loaded = CodecTokenizer.build(checkpoint=path)
    assert loaded.source["source"] == "checkpoint" and not loaded.is_random_init
    wav = _signal(9000, 11)
    assert torch.equal(loaded.encode([wav])[0], codec.encode([wav])[0])
    loaded.save(tmp_path / "p" / "codec")
    again = CodecTokenizer.from_processed_dir(tmp_path / "p")
    assert torch.equal(again.encode([wav])[0], codec.encode([wav])[0])


def test_offline_without_weights_says_what_to_download_and_which_key(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CodecError) as err:
        CodecTokenizer.build(pretrained=True)
    message = str(err.value)
    assert enc.OFFICIAL_URL in message and "preprocess.codec_checkpoint" in message


def test_decode_shape(codec):
    codes = torch.randint(0, 1024, (2, 10, 8))
    wav = codec.decode(codes)
    assert wav.shape == (2, 10 * 320) and torch.isfinite(wav).all()
