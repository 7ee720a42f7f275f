"""Training-time listening: at each validation a few validation utterances are synthesised and
written to tensorboard as audio (`evaluation.listen_utterances`, 0 = off). No ASR or scoring:
this is for ears, at the cost of a few short AR decodes.

Each sample continues its own utterance: the first third of its codec frames (at most 3 s) is
the acoustic prompt, its whole phone sequence the text, so no prompt transcript is needed. The
clip written is prompt + generated audio, next to the utterance's codes decoded as they are
(`.../reference`, written once: what a perfect model would give through this codec). At most
1.5x the reference's remaining length (and `listen_max_seconds`) is generated.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from models.codec.encodec import CodecError, CodecTokenizer
from models.tts.valle.losses import MAX_PROMPT_FRAMES
from utils.config import Config, resolve_path

log = logging.getLogger(__name__)
_REFERENCES_WRITTEN: set[tuple[str, str]] = set()  # (tensorboard dir, tag): written once


@functools.cache
def _codec(processed_dir: Path, device: str) -> CodecTokenizer | None:
    try:
        return CodecTokenizer.from_processed_dir(processed_dir, device)
    except CodecError as e:
        log.warning("training-time listening is off: %s", e)
        return None


@torch.no_grad()
def write_listening_samples(model, batch: dict, cfg: Config, writer, step: int, device) -> int:
    """Synthesise the first `listen_utterances` items of a validation batch into `writer`."""
    n = min(cfg.evaluation.listen_utterances, len(batch["cut_ids"]))
    if n == 0 or writer is None:
        return 0
    # Training RNGs untouched: building the codec (module init) and sampling happen in a fork.
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        codec = _codec(resolve_path(cfg.preprocess.processed_dir), str(device))
        if codec is None:
            return 0
        inf, rate = cfg.inference, codec.sample_rate
        frame_rate = rate / codec.hop_size
        generator = torch.Generator(device=device).manual_seed(inf.seed)
        for i in range(n):
            text = batch["x"][i, : int(batch["x_lens"][i])].to(device)  # (S,) with BOS/EOS
            codes = batch["y"][i, : int(batch["y_lens"][i]), : model.num_quantizers].to(device)
            prompt = codes[: max(1, min(MAX_PROMPT_FRAMES, codes.shape[0] // 3))]  # (P, Q)
            # at most 1.5x the reference's remaining frames: a sample to compare, cheap to make
            cap = min(
                cfg.evaluation.listen_max_seconds * frame_rate, 1.5 * (len(codes) - len(prompt))
            )
            result = model.generate(
                text[None], torch.tensor([text.numel()], device=device),
                prompt[None], torch.tensor([prompt.shape[0]], device=device),
                torch.tensor([2], device=device),  # empty prompt text: <bos><eos>
                top_k=inf.top_k, top_p=inf.top_p, temperature=inf.temperature,
                generator=generator, use_kv_cache=inf.use_kv_cache,
                max_new_frames=max(1, int(cap)),
            )  # fmt: skip
            clip = torch.cat([prompt, result.codes[0].to(device)])  # (P + G, Q)
            name = f"listen/{batch['cut_ids'][i]}"
            clips = [(name, clip)]
            if (writer.log_dir, name) not in _REFERENCES_WRITTEN:  # the same at every validation
                clips.append((f"{name}/reference", codes))
                _REFERENCES_WRITTEN.add((writer.log_dir, name))
            for tag, c in clips:
                wav = codec.decode(c[None].long())[0].float().clamp(-1, 1).cpu()
                writer.add_audio(tag, wav[None], step, sample_rate=rate)
    return n
