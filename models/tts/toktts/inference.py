"""TokTTS recipe stage 3: its part of the shared inference shell (models/base/inference.py).

The shell reads the test list, claims the run folder, batches, seeds and writes results.jsonl;
this module supplies TokTTS's line format (`text[|name]`, `parse_line`) and its `Synthesis`:
text -> character ids (the model's `chars.json`, the stage-1 normaliser when the model was
trained with it), batched KV-cached decoding (`decode.generate`) with top-k / top-p / temperature,
and EnCodec decoding. Item i samples only from a generator seeded with the shell's per-utterance
seed, so its audio does not depend on the batch, the list order or the other lines.

The weights, their architecture, the character table and the codec come with the model
(`pipeline.find_model`: an experiment, a checkpoint folder or an exported model folder); the
decoding settings come from the recipe config's `inference` section plus the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.base.inference import InferenceError, output_name
from models.codec.encodec import CodecTokenizer
from models.tts.toktts.decode import generate
from models.tts.toktts.model import CharTable, TokTTS
from text.chars import UnknownCharacterError
from text.normalize import normalize_text
from utils.config import InferenceConfig


@dataclass
class TextRequest:
    """Speak `text`; `name` is the output file stem."""

    name: str
    text: str
    line: int | None = None  # test-list line (None: the command line)

    def fields(self) -> dict:
        return {"text": self.text}


def parse_line(raw: str, lineno: int, folder: Path) -> TextRequest:
    """`text` or `text|name` (the name: a plain file stem; default the line number)."""
    fields = raw.split("|")
    if len(fields) > 2:
        raise InferenceError(f"expected text[|name], found {len(fields)} '|'-separated fields")
    text = fields[0].strip()
    if not text:
        raise InferenceError("empty text")
    name = fields[1].strip() if len(fields) == 2 else ""
    return TextRequest(output_name(name, lineno), text, lineno)


@dataclass
class Prepared:
    utt: TextRequest
    ids: torch.Tensor  # (S,) character ids

    @property
    def length(self) -> tuple[int]:
        return (len(self.ids),)


def frame_cap(model_frames: int, inf: InferenceConfig, frame_rate: int) -> int:
    """The model's max_frames, lowered by inference.max_frames / max_seconds when set (> 0)."""
    caps = [model_frames]
    if inf.max_frames > 0:
        caps.append(inf.max_frames)
    if inf.max_seconds > 0:
        caps.append(max(1, round(inf.max_seconds * frame_rate)))
    return min(caps)


class TokTTSSynthesis:
    """The shell's `Synthesis` for TokTTS (models/base/inference.py)."""

    def __init__(
        self,
        model: TokTTS,
        chars: CharTable,
        codec: CodecTokenizer,
        inf: InferenceConfig,
        normalize: bool = False,
        reference: Path | None = None,
    ):
        self.model, self.chars, self.codec, self.inf = model, chars, codec, inf
        self.normalize, self.reference = normalize, reference
        self.device = next(model.parameters()).device
        self.sample_rate = codec.sample_rate
        self.max_frames = frame_cap(model.cfg.max_frames, inf, model.cfg.frame_rate)

    def prepare(self, utts: list[TextRequest]) -> list[Prepared | InferenceError]:
        out: list[Prepared | InferenceError] = []
        for utt in utts:
            text = normalize_text(utt.text) if self.normalize else utt.text
            try:
                out.append(Prepared(utt, torch.tensor(self.chars.encode(text))))
            except (UnknownCharacterError, ValueError) as e:
                out.append(InferenceError(str(e)))
        return out

    def generate(
        self, batch: list[Prepared], seeds: list[int]
    ) -> tuple[list[torch.Tensor], list[str]]:
        generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        result = generate(
            self.model,
            [item.ids.to(self.device) for item in batch],
            top_k=self.inf.top_k,
            top_p=self.inf.top_p,
            temperature=self.inf.temperature,
            generators=generators,
            max_frames=self.max_frames,
            use_kv_cache=self.inf.use_kv_cache,
        )
        return result.codes, result.stop_reasons

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(codes[None].to(self.codec.device))[0].float().cpu()

    def record(self, item: Prepared) -> dict:
        """+ the reference recording as `audio_prompt` (stage 4's SIM-o compares the output's
        voice with it; TokTTS itself has no prompt, hence `text_prompt` "")."""
        record = {"characters": len(item.ids), "max_frames": self.max_frames}
        if self.reference is not None:
            record.update(audio_prompt=str(self.reference), text_prompt="")
        return record


def default_reference(root: Path) -> Path | None:
    """The recording of the first valid utterance of the data an experiment was trained on
    (its config.json: preprocess.processed_dir, dataset), if it is still there; else None."""
    import json

    from lhotse import CutSet

    from utils.config_loader import resolve_path

    try:
        saved = json.loads((root / "config.json").read_text(encoding="utf-8"))
        processed = resolve_path(saved["preprocess"]["processed_dir"])
        for dataset in saved["dataset"]:
            path = processed / dataset / "cuts_valid.jsonl.gz"
            if path.is_file():
                first = min(CutSet.from_file(path), key=lambda c: c.id)
                source = Path(first.recording.sources[0].source)
                return source if source.is_file() else None
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return None
