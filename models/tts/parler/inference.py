"""Parler-TTS inference (recipe stage 3): Parler's part of the shared inference shell.

`models.base.inference` reads test lists, claims the run folder, batches, seeds and writes
results.jsonl; this module supplies what is Parler's:
* where the weights come from (`find_model_source`): one of our experiments (its latest or best
  checkpoint; architecture and tokenizer from `<exp>/parler/`, codec = the experiment's stage-1
  DAC), one checkpoint folder, or a released-layout folder / hub id (`parler-tts/...`; codec =
  the DAC inside its checkpoint); `inference.codec` names another (e.g. `descript/dac_44khz`);
* the line format `description|text[|name]` (`parse_line`);
* the `Synthesis` (`ParlerSynthesizer`): the tokenizer makes the description and transcript ids,
  `generate.py` decodes a whole batch at once (KV cache, per-item EOS, each item sampling from
  its own generator, so its output does not depend on the batch), the DAC makes 44.1 kHz audio.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from lhotse.dataset.collation import collate_vectors

from models.base.inference import InferenceError, output_name
from models.codec.dac import CodecError, DacCodec
from models.tts.parler.generate import generate
from models.tts.parler.parler import ParlerTTS
from models.tts.parler.pretrained import (
    ParlerLoadError,
    load_state,
    load_tokenizer,
    read_config,
    read_weights,
    resolve_folder,
)
from models.tts.parler.trainer import experiment_codec, experiment_model_dir
from utils.checkpoint import CheckpointError, resolve_checkpoint
from utils.checkpoint_average import average_weights, checkpoints_to_average, only_one_checkpoint
from utils.config import read_json5

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """One Parler-TTS to run: weights, the folder with its config + tokenizer, its codec."""

    kind: str  # "experiment" | "checkpoint" | "release"
    root: Path  # the experiment or the release folder
    folder: Path  # released-layout files: config.json, tokenizer (our experiments: <exp>/parler)
    weights: Path  # model.safetensors (released: the folder's, maybe sharded)
    codec: str  # DAC: a DacCodec.save folder, a DacModel folder or hub id; "" = inside `folder`
    checkpoints: tuple[Path, ...] = ()  # averaged checkpoint folders (--infer_avg); () = weights

    def describe(self) -> str:
        return f"{self.kind} {self.root} (weights {self.weights}, codec {self.codec})"


def find_model_source(
    path: str | Path, which: str = "latest", codec: str = "", avg: str = "1"
) -> ModelSource:
    """Our experiment / checkpoint folder, or a released folder / hub id (see module doc); `avg`
    (--infer_avg): the checkpoints whose mean is used (utils/checkpoint_average.py)."""
    p = Path(path)
    config = p / "config.json"
    if config.is_file() and read_json5(config).get("model_type") == "parler_tts" or not p.exists():
        try:
            folder = resolve_folder(path)
        except ParlerLoadError as e:
            raise InferenceError(str(e)) from None
        only_one_checkpoint(avg, folder)
        return ModelSource("release", folder, folder, folder / "model.safetensors", codec)
    try:
        found = resolve_checkpoint(p, which)
    except CheckpointError as e:
        raise InferenceError(f"{e} (or a released Parler-TTS folder / hub id)") from None
    try:
        codec = codec or str(experiment_codec(found.root))
    except ParlerLoadError as e:
        raise InferenceError(str(e)) from None
    averaged = checkpoints_to_average(found, avg)
    return ModelSource(found.kind, found.root, experiment_model_dir(found.folder), found.weights,
                       codec, tuple(averaged) if len(averaged) > 1 else ())  # fmt: skip


def load_model(source: ModelSource, device: torch.device | str = "cpu") -> ParlerTTS:
    """The model in eval mode on `device`; InferenceError for a folder that does not fit."""
    try:
        model = ParlerTTS(read_config(source.folder))
        if source.kind == "release":
            state = read_weights(source.folder)
        else:
            state = average_weights(source.checkpoints or [source.weights.parent])
        load_state(model, state, source.weights)
    except (ParlerLoadError, CheckpointError) as e:
        raise InferenceError(str(e)) from None
    return model.to(device).eval()


def load_codec(source: ModelSource, device: torch.device | str = "cpu") -> DacCodec:
    """The DAC inside a released folder (codec ""), one saved by stage 1 (dac.json), or
    official weights from a DacModel folder or hub id (e.g. descript/dac_44khz)."""
    where = Path(source.codec)
    try:
        if not source.codec:
            return DacCodec.from_parler_checkpoint(source.folder).to(device)
        if (where / "dac.json").is_file():
            return DacCodec.load(where).to(device)
        num_codebooks = read_config(source.folder).num_codebooks
        return DacCodec.pretrained(source.codec, num_codebooks).to(device)
    except (CodecError, ParlerLoadError) as e:
        raise InferenceError(f"codec {source.codec}: {e}") from None


@dataclass
class Request:
    """One request: speak `text` as `description` says."""

    name: str  # output file stem
    description: str
    text: str
    line: int | None = None  # line of the test list (None: the command line)

    def fields(self) -> dict:
        return {"description": self.description, "text": self.text}


def parse_line(raw: str, lineno: int, folder: Path) -> Request:
    """`description|text[|name]` (fields stripped); the shell's read_test_list calls this."""
    fields = [f.strip() for f in raw.split("|")]
    if len(fields) not in (2, 3):
        raise InferenceError(f"expected description|text[|name], found {len(fields)} fields")
    if not fields[0] or not fields[1]:
        raise InferenceError(f"empty {'description' if not fields[0] else 'text'} field")
    return Request(output_name(fields[2] if len(fields) == 3 else None, lineno), fields[0],
                   fields[1], lineno)  # fmt: skip


# Capitalised words that open descriptions without naming anyone ("A man ...", "Her voice ...").
NOT_NAMES = {"a", "an", "the", "this", "that", "her", "his", "she", "he", "their", "its", "in",
             "with", "very", "slightly", "quite", "male", "female", "speaker", "voice"}  # fmt: skip


def speaker_name(description: str) -> str | None:
    """The speaker a description names, as the released models' named voices are prompted
    ("Jerry speaks ...", "Thomas's voice is ..."): its first word when capitalised and not a
    common opener (NOT_NAMES); None otherwise. Stage 4 compares outputs of the same name."""
    match = re.match(r"\s*([A-Z][a-z]+)(?:'s)?\b", description)
    if match is None or match.group(1).lower() in NOT_NAMES:
        return None
    return match.group(1)


@dataclass
class Prepared:
    utt: Request
    description_ids: list[int]
    prompt_ids: list[int]

    @property
    def length(self) -> tuple[int, int]:
        return len(self.prompt_ids), len(self.description_ids)


class ParlerSynthesizer:
    """The shell's `Synthesis` for Parler-TTS (models/base/inference.py)."""

    def __init__(self, model: ParlerTTS, tokenizer, codec: DacCodec, inf, device):
        self.model, self.tokenizer, self.codec, self.inf = model, tokenizer, codec, inf
        self.device = torch.device(device)
        self.sample_rate = codec.sample_rate
        self.text_pad = int(model.cfg.text_encoder.get("pad_token_id", 0))
        if codec.num_codebooks != model.cfg.num_codebooks:
            raise InferenceError(f"the codec has {codec.num_codebooks} codebooks, the model "
                                 f"{model.cfg.num_codebooks}: use the model's codec")  # fmt: skip

    def prepare(self, utts: list[Request]) -> list[Prepared | InferenceError]:
        rows = self.model.stack.embed_positions.weights.shape[0]
        out: list[Prepared | InferenceError] = []
        for utt in utts:
            ids = [self.tokenizer(t).input_ids for t in (utt.description, utt.text)]
            positions = len(ids[1]) + self.inf.max_new_tokens + 1
            if positions > rows:
                out.append(InferenceError(
                    f"{utt.name}: transcript ({len(ids[1])} tokens) + inference.max_new_tokens "
                    f"({self.inf.max_new_tokens}) + 1 > max_position_embeddings = {rows}: "
                    "shorten the text or lower inference.max_new_tokens"))  # fmt: skip
            else:
                out.append(Prepared(utt, *ids))
        return out

    def generate(self, batch: list[Prepared], seeds: list[int]):
        """The batch at once; item i samples only from a generator seeded with seeds[i]."""
        d = self.device

        def padded(rows: list[list[int]]):
            ids = collate_vectors([torch.tensor(r) for r in rows], self.text_pad)
            mask = collate_vectors([torch.ones(len(r), dtype=torch.long) for r in rows], 0)
            return ids.to(d), mask.to(d)

        generators = [torch.Generator(device=d).manual_seed(s) for s in seeds]
        inf = self.inf
        results = generate(
            self.model, *padded([it.description_ids for it in batch]),
            *padded([it.prompt_ids for it in batch]), max_new_tokens=inf.max_new_tokens,
            do_sample=inf.do_sample, top_k=inf.top_k, top_p=inf.top_p,
            temperature=inf.temperature, generators=generators, use_cache=inf.use_kv_cache,
        )  # fmt: skip
        return [r.codes.cpu() for r in results], [r.stop for r in results]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codec.decode([codes.to(self.codec.device)])[0]

    def record(self, item: Prepared) -> dict:
        return {"speaker": speaker_name(item.utt.description),
                "description_tokens": len(item.description_ids),
                "text_tokens": len(item.prompt_ids)}  # fmt: skip


def load_synthesizer(source: ModelSource, inf, device) -> ParlerSynthesizer:
    """Model, tokenizer and codec of `source` with the decoding settings `inf`."""
    try:
        tokenizer = load_tokenizer(source.folder)
    except ParlerLoadError as e:
        raise InferenceError(str(e)) from None
    model, codec = load_model(source, device), load_codec(source, device)
    if codec.is_random_init:
        log.warning("the codec is RANDOM-INIT: the audio of this run is MEANINGLESS noise")
    if json.loads((source.folder / "config.json").read_text()).get("codectts_random_init"):
        log.warning("%s: a RANDOM-INIT model folder (codectts_random_init): speech is noise",
                    source.folder)  # fmt: skip
    return ParlerSynthesizer(model, tokenizer, codec, inf, device)
