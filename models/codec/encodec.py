"""Frozen EnCodec 24 kHz tokenizer: wav -> (frames, 8) codes and back, batched and exact.

`CodecTokenizer` wraps `encodec.EncodecModel.encodec_model_24khz` at a fixed bandwidth
(6 kbps = 8 codebooks of 1024 entries at 75 frames/s, hop 320 samples). Three weight sources:

* `pretrained` - the official weights (the `encodec` package downloads and caches
  `encodec_24khz-d7cc33bc.th` under torch hub's cache; offline, a clear error says what to download
  and that `preprocess.codec_checkpoint` takes a local copy);
* `checkpoint` - a local weights file (`.th`/`.pt` read with `weights_only=True`, or
  `.safetensors`), no network;
* `random_init` - seeded random weights. Its quantizer starts with all-zero codebooks
  (`kmeans_init=True`, `inited=False`) and would emit only code 0, so `kmeans_init_` runs encodec's
  k-means initialisation deterministically on corpus audio. The result is saved with the
  processed data (`save`) so stage 3 decodes with the very same codec. Its audio is MEANINGLESS.

Exact batching. The 24 kHz encoder is causal: every conv is left-padded, so a frame only sees
samples before its end, and right zero-padding to the batch length cannot change any frame
whose input window lies inside the utterance. The one exception is the LAST frame of an
utterance whose length is not a multiple of 320: encoding it alone, each strided conv pads its
input on the right with `reflect` padding to complete the last window, which zero padding does
not reproduce (checked: it changes that frame's codes). So the conv stack before the LSTM runs
on the zero-padded batch, and the last frame's features of such utterances are recomputed from a
short tail (the last `TAIL_CONTEXT_FRAMES` whole frames + the partial one, cut at a multiple of
320 samples so every stride keeps its phase; much longer than the conv stack's receptive field).
Tails of equal length are batched together. The LSTM and final conv then run per utterance (a
batched LSTM rounds differently, ~3e-8, enough to flip a near-tie code), and the quantizer is per
frame. `tests/test_codec.py` checks that batched codes equal `EncodecModel.encode` of each
utterance alone.

Bitwise equality of the batched path needs float kernels whose rounding does not depend on the
batch: on CPU, oneDNN picks other conv blockings for other batch sizes / lengths (measured:
batches of 16 differ from encoding alone by ~7e-8, and with 2 threads the last frame of a
tail differs by ~2e-8), which flips codes that are tied to within rounding. The encoding
alone is no more stable across settings (1 vs 2 threads: ~7e-8). So `encode` batches on CUDA
(where batching pays: one launch per layer for a whole batch) and on CPU encodes one utterance
at a time with the one loaded model - bitwise identical to `EncodecModel.encode` and faster than
batching on CPU (measured: batch of 16, 8.0 s vs 4.2 s one by one). `encode(..., batched=True)`
forces the batched path (tests check it against encoding alone with deterministic settings).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import torch
from lhotse.cut import Cut
from lhotse.utils import fastcopy

from utils.fileio import atomic_path, atomic_write_text

SAMPLE_RATE = 24000
HOP = 320
CODEBOOK_SIZE = 1024
OFFICIAL_NAME = "encodec_24khz-d7cc33bc.th"
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + OFFICIAL_NAME
CODEC_JSON = "codec.json"
RANDOM_WEIGHTS = "encodec_24khz_random_init.safetensors"
TAIL_CONTEXT_FRAMES = 16  # 5120 samples of left context for the last partial frame
RANDOM_INIT_WARNING = (
    "RANDOM-INIT CODEC: preprocess.codec_pretrained is false, so EnCodec has random weights "
    "(codebooks k-means-initialised on the corpus). Its tokens and decoded audio are "
    "MEANINGLESS; use it only for tests and the demo. Set codec_pretrained: true (or "
    "codec_checkpoint) for real data."
)


class CodecError(RuntimeError):
    """The codec cannot be built or loaded; the message says what to do."""


def _new_model(pretrained_state: dict | None):
    from encodec import EncodecModel

    with warnings.catch_warnings():  # encodec uses the deprecated torch weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    if pretrained_state is not None:
        model.load_state_dict(pretrained_state)
    return model.eval()


def _official_state() -> dict:
    """Official 24 kHz weights: torch hub cache first, else the encodec package's download."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_NAME
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(
            OFFICIAL_URL, map_location="cpu", check_hash=True, weights_only=True
        )
    except Exception as e:  # URLError, socket errors, hash mismatch...
        raise CodecError(
            f"cannot get the official EnCodec 24 kHz weights ({type(e).__name__}: {e}). "
            f"Download {OFFICIAL_URL} on a machine with internet, copy it here and set "
            f"preprocess.codec_checkpoint: /path/to/{OFFICIAL_NAME} (or place it at {cached}). "
            "For tests/demos only, preprocess.codec_pretrained: false builds a random-init codec "
            "(meaningless audio)."
        ) from None


def _local_state(path: str | os.PathLike) -> dict:
    from utils.checkpoint import CheckpointError, load_tensor_file

    try:
        return load_tensor_file(path)
    except CheckpointError as e:
        raise CodecError(f"preprocess.codec_checkpoint: {e}") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _kmeans(
    samples: torch.Tensor, num_clusters: int, num_iters: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """encodec's `core_vq.kmeans` (same init and updates) with a seeded generator and
    matmul distances, so it needs O(n * k) memory instead of O(n * k * dim)."""
    n = samples.shape[0]
    if n >= num_clusters:
        idx = torch.randperm(n, generator=gen)[:num_clusters]
    else:
        idx = torch.randint(0, n, (num_clusters,), generator=gen)
    means = samples[idx.to(samples.device)].clone()
    sq = samples.pow(2).sum(1, keepdim=True)  # (n, 1)
    bins = torch.zeros(num_clusters, dtype=torch.long, device=samples.device)
    for _ in range(num_iters):
        dists = sq - 2 * samples @ means.t() + means.pow(2).sum(1)[None]  # (n, k)
        buckets = dists.argmin(dim=-1)
        bins = torch.bincount(buckets, minlength=num_clusters)
        new_means = torch.zeros_like(means).index_add_(0, buckets, samples)
        new_means = new_means / bins.clamp(min=1)[:, None].to(samples.dtype)
        means = torch.where((bins == 0)[:, None], means, new_means)
    return means, bins


class CodecTokenizer:
    """Frozen EnCodec 24 kHz at `bandwidth` kbps; codes are (frames, n_q) int64 in [0, 1024)."""

    def __init__(
        self, model, bandwidth: float = 6.0, source: dict | None = None, device="cpu"
    ) -> None:
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.set_target_bandwidth(bandwidth)
        self.bandwidth = bandwidth
        self.device = torch.device(device)
        self.source = dict(source or {"source": "pretrained"})
        self.sample_rate = SAMPLE_RATE
        self.hop_size = HOP
        self.num_quantizers = self.model.quantizer.get_num_quantizers_for_bandwidth(
            self.model.frame_rate, bandwidth
        )
        layers = list(self.model.encoder.model)
        self._lstm_at = next(i for i, m in enumerate(layers) if type(m).__name__ == "SLSTM")

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        pretrained: bool = True,
        checkpoint: str | os.PathLike = "",
        bandwidth: float = 6.0,
        seed: int = 0,
        device="cpu",
    ) -> CodecTokenizer:
        """Official weights, a local `checkpoint`, or (pretrained=False) seeded random init.

        A random-init codec still needs `kmeans_init_` on real audio before its codes mean
        anything but 0.
        """
        if checkpoint:
            path = Path(checkpoint)
            model = _new_model(_local_state(path))
            source = {"source": "checkpoint", "checkpoint": str(path), "sha256": file_sha256(path)}
        elif pretrained:
            model = _new_model(_official_state())
            source = {"source": "pretrained", "checkpoint": OFFICIAL_NAME, "url": OFFICIAL_URL}
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _new_model(None)
            source = {"source": "random_init", "init_seed": seed, "warning": RANDOM_INIT_WARNING}
        return cls(model, bandwidth, source, device)

    @classmethod
    def from_config(cls, preprocess_cfg, device="cpu") -> CodecTokenizer:
        """Build from a `PreprocessConfig` (codec_pretrained / codec_checkpoint / seed)."""
        from utils.config import resolve_path

        ckpt = preprocess_cfg.codec_checkpoint
        return cls.build(
            pretrained=preprocess_cfg.codec_pretrained,
            checkpoint=resolve_path(ckpt) if ckpt else "",
            bandwidth=preprocess_cfg.codec_bandwidth,
            seed=preprocess_cfg.codec_init_seed,
            device=device,
        )

    @classmethod
    def from_processed_dir(cls, processed_dir: str | os.PathLike, device="cpu") -> CodecTokenizer:
        """The exact codec that produced `<processed_dir>` (reads `codec/codec.json`)."""
        codec_dir = Path(processed_dir) / "codec"
        meta_path = codec_dir / CODEC_JSON
        if not meta_path.is_file():
            raise CodecError(f"{meta_path} not found: run stage 1 (run.sh --stage 1) first")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta.get("source")
        if kind == "random_init":
            weights = codec_dir / meta["weights"]
            if not weights.is_file():
                raise CodecError(f"{weights} (random-init codec weights) is missing; rerun stage 1")
            warnings.warn(RANDOM_INIT_WARNING, stacklevel=2)
            model = _new_model(_local_state(weights))
        elif kind == "checkpoint":
            path = Path(meta["checkpoint"])
            if not path.is_file():
                raise CodecError(
                    f"{meta_path}: codec checkpoint {path} is missing; copy it back "
                    "(its sha256 is recorded in codec.json)"
                )
            model = _new_model(_local_state(path))
        elif kind == "pretrained":
            model = _new_model(_official_state())
        else:
            raise CodecError(f"{meta_path}: unknown codec source {kind!r}")
        return cls(model, meta["bandwidth"], meta, device)

    def to(self, device) -> CodecTokenizer:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @property
    def is_random_init(self) -> bool:
        return self.source.get("source") == "random_init"

    @property
    def is_initialized(self) -> bool:
        """False for a random-init codec whose codebooks were never k-means-initialised."""
        layers = self.model.quantizer.vq.layers[: self.num_quantizers]
        return all(bool(layer._codebook.inited.item()) for layer in layers)

    def fingerprint(self) -> dict:
        """What identifies the codes this codec produces (for stage-1 bookkeeping)."""
        keys = ("source", "checkpoint", "sha256", "init_seed", "kmeans_sha256")
        out = {k: self.source[k] for k in keys if k in self.source}
        out.update(bandwidth=self.bandwidth, num_quantizers=self.num_quantizers)
        return out

    # ---------------------------------------------------------------- k-means init
    @torch.no_grad()
    def kmeans_init_(self, wavs: list[torch.Tensor], seed: int = 0) -> None:
        """Initialise the first n_q codebooks by seeded k-means on the encoder output of `wavs`.

        Same algorithm as encodec's first training-mode pass (`EuclideanCodebook.init_embed_`:
        k-means with `kmeans_iters` iterations on the residual of each quantizer in turn), but
        deterministic and without the EMA update that a training pass would also apply.
        """
        emb = torch.cat(  # (N frames, D), one utterance at a time: bounded memory
            [self.model.encoder(w[None, None].to(self.device))[0].t() for w in wavs]
        ).float()
        gen = torch.Generator().manual_seed(seed)
        residual = emb
        for layer in self.model.quantizer.vq.layers[: self.num_quantizers]:
            book = layer._codebook
            means, bins = _kmeans(residual, book.codebook_size, book.kmeans_iters, gen)
            book.embed.data.copy_(means.to(book.embed))
            book.embed_avg.data.copy_(means.to(book.embed))
            book.cluster_size.data.copy_(bins.to(book.cluster_size))
            book.inited.data.fill_(1.0)
            residual = residual - book.dequantize(book.quantize(residual))
        digest = hashlib.sha256()
        for layer in self.model.quantizer.vq.layers[: self.num_quantizers]:
            digest.update(layer._codebook.embed.detach().cpu().numpy().tobytes())
        self.source["kmeans_sha256"] = digest.hexdigest()
        self.source["kmeans_frames"] = int(emb.shape[0])

    # ---------------------------------------------------------------- save
    def save(self, codec_dir: str | os.PathLike) -> Path:
        """Write `codec.json` (+ the weights of a random-init codec) into codec_dir, atomically."""
        from safetensors.torch import save_file

        codec_dir = Path(codec_dir)
        codec_dir.mkdir(parents=True, exist_ok=True)
        meta = dict(self.source)
        meta.update(
            format="codectts-codec-1",
            model="encodec_24khz",
            sample_rate=SAMPLE_RATE,
            hop_size=HOP,
            bandwidth=self.bandwidth,
            num_quantizers=self.num_quantizers,
            codebook_size=CODEBOOK_SIZE,
        )
        if self.is_random_init:
            if not self.is_initialized:
                raise CodecError("random-init codec saved before kmeans_init_: its codes are all 0")
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            with atomic_path(codec_dir / RANDOM_WEIGHTS) as tmp:
                save_file(state, str(tmp))
            meta["weights"] = RANDOM_WEIGHTS
        atomic_write_text(codec_dir / CODEC_JSON, json.dumps(meta, indent=2) + "\n")
        return codec_dir

    # ---------------------------------------------------------------- encode / decode
    @staticmethod
    def num_frames(num_samples: int) -> int:
        return math.ceil(num_samples / HOP)

    def _pad_batch(self, wavs: list[torch.Tensor]) -> torch.Tensor:
        longest = max(w.shape[-1] for w in wavs)
        batch = torch.zeros(len(wavs), 1, longest, device=self.device)
        for i, w in enumerate(wavs):
            batch[i, 0, : w.shape[-1]] = w.to(self.device)
        return batch

    @torch.no_grad()  # (grad mode takes other LSTM kernels: ~4e-8 different from no_grad)
    def _encode_embeddings(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encoder output (D, frames) of each wav, equal to encoding it alone (module doc)."""
        layers = list(self.model.encoder.model)
        convs = torch.nn.Sequential(*layers[: self._lstm_at])
        head = torch.nn.Sequential(*layers[self._lstm_at :])
        lengths = [int(w.shape[-1]) for w in wavs]
        assert min(lengths) > 0, "empty waveform"
        feats = convs(self._pad_batch(wavs))  # (B, D, ceil(max_len / HOP))
        # Frames that zero padding can change are recomputed from a chunk that ends where the
        # utterance ends and starts at a multiple of HOP: the last frame of an utterance with a
        # partial last frame, and every frame of a very short one (its left reflect padding
        # would read past its end).
        chunks: dict[int, list[tuple[int, int, int]]] = {}  # length -> (item, start, from frame)
        for i, n in enumerate(lengths):
            if n < TAIL_CONTEXT_FRAMES * HOP:
                chunks.setdefault(n, []).append((i, 0, 0))
            elif n % HOP:
                start = (n // HOP - TAIL_CONTEXT_FRAMES) * HOP
                chunks.setdefault(n - start, []).append((i, start, self.num_frames(n) - 1))
        for length, members in chunks.items():
            batch = torch.stack([wavs[i][s : s + length].to(self.device) for i, s, _ in members])
            out = convs(batch[:, None, :])  # (b, D, ceil(length / HOP))
            for j, (i, start, first) in enumerate(members):
                feats[i, :, first : self.num_frames(lengths[i])] = out[j, :, first - start // HOP :]
        # The LSTM runs per utterance: batched, its matmuls round differently (~3e-8), which
        # can flip near-tie codes; it is cheap next to the conv stack.
        return [
            head(feats[i : i + 1, :, : self.num_frames(n)].contiguous())[0]
            for i, n in enumerate(lengths)
        ]

    @torch.no_grad()
    def encode(self, wavs: list[torch.Tensor], batched: bool | None = None) -> list[torch.Tensor]:
        """1-D float waveforms at 24 kHz -> one (frames, n_q) int64 tensor each (on CPU).

        frames = ceil(samples / 320). `batched=None` picks by device: on CUDA the list is encoded
        as one padded batch (callers group utterances of similar length, see
        `preprocessors.tokenize`); on CPU one utterance at a time with this one model, which is
        bitwise identical to `EncodecModel.encode` and, measured, faster than batching there.
        """
        for w in wavs:
            assert w.dim() == 1, f"encode expects 1-D mono waveforms, got shape {tuple(w.shape)}"
        if not wavs:
            return []
        if batched is None:
            batched = self.device.type == "cuda"
        if not batched:
            return [self._encode_alone(w) for w in wavs]
        embs = self._encode_embeddings(wavs)
        frames = [e.shape[-1] for e in embs]
        stacked = torch.zeros(len(embs), embs[0].shape[0], max(frames), device=self.device)
        for i, e in enumerate(embs):
            stacked[i, :, : e.shape[-1]] = e
        codes = self.model.quantizer.encode(stacked, self.model.frame_rate, self.bandwidth)
        codes = codes.permute(1, 2, 0).cpu()  # (n_q, B, T) -> (B, T, n_q)
        return [codes[i, :t].clone() for i, t in enumerate(frames)]

    def _encode_alone(self, wav: torch.Tensor) -> torch.Tensor:
        """What `EncodecModel._encode_frame` computes for one utterance (24 kHz: no segments,
        no normalisation), without rebuilding anything."""
        emb = self.model.encoder(wav[None, None].to(self.device))  # (1, D, frames)
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.bandwidth)
        return codes[:, 0].t().cpu()  # (n_q, 1, T) -> (T, n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T, n_q) codes -> (B, T * 320) float waveforms at 24 kHz."""
        assert codes.dim() == 3, f"decode expects (B, T, n_q) codes, got {tuple(codes.shape)}"
        frames = [(codes.to(self.device).permute(0, 2, 1).long(), None)]
        return self.model.decode(frames)[:, 0, : codes.shape[1] * HOP]

    def encode_first_seconds(
        self, wavs: list[torch.Tensor], seconds: float, batched: bool | None = None
    ) -> list[torch.Tensor]:
        """Codes of the first `seconds` of each wav: at most round(seconds * 75) frames each.

        Only those samples are encoded (a whole number of 320-sample frames). The encoder is
        causal, so these equal the first frames of encoding the whole wav (tests check it).
        """
        frames = round(seconds * self.model.frame_rate)
        assert frames >= 1, f"{seconds} s is less than one codec frame"
        return self.encode([w[: frames * HOP] for w in wavs], batched=batched)


def codec_span(cut: Cut) -> Cut:
    """The cut with its duration set to the time its codes cover (what stage 1 writes).

    EnCodec frame i encodes samples [i * HOP, (i + 1) * HOP) (the last hop padded),
    so N samples give ceil(N / HOP) frames spanning ceil(N / HOP) * HOP samples, up to HOP - 1
    samples (13.3 ms) past the audio. The codes are stored as a TemporalArray with start 0 and
    frame_shift HOP / SAMPLE_RATE, i.e. with those true frame times. lhotse counts the frames of
    a cut as round-half-up(duration / frame_shift) (`cut.load_codes()`, `truncate`, the
    validator), which leaves out the last frame when it covers less than half a hop of audio;
    with the cut's duration equal to the codes' span lhotse counts all of them, and its
    validator sees matching durations. The recording and the supervisions keep the true audio
    length; lhotse pads the few missing samples if the cut's audio is loaded (within its
    duration mismatch tolerance)."""
    return fastcopy(cut, duration=cut.codes.duration)
