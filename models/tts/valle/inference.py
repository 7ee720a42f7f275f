"""Zero-shot VALL-E inference (recipe stage 3): VALL-E's part of the shared inference shell.

`models.base.inference` reads test lists, claims the run folder, batches, seeds and writes
results.jsonl; this module supplies what is VALL-E's: where the weights come from and which config
goes with them (`find_model_source`, `load_model`), the line format (`Utterance`,
`parse_test_list`), how text and audio become model input (`TextFrontend`, `load_prompt`) and the
batched decoding (`Synthesizer`, the shell's `Synthesis`).

Which config is used for what:
* the architecture (`model`) and the front end (`preprocess`: G2P language, codec) come with the
  weights: the experiment's saved `config.json` (+ the checkpoint's `meta.json`, which wins for
  `model`), or a release's `args.json` (`model` section; G2P/codec from the recipe config);
* decoding (`inference`: top_k, top_p, temperature, seed, batch size, caps, ...) comes from the
  recipe config given with `--config` plus the command-line overrides. A saved experiment config's
  own `inference` section is never used, so the same command line means the same decoding for
  any checkpoint.

Sampling: each utterance draws from its own generator seeded with the shell's
`utterance_seed(inference.seed, name)`: its output does not depend on the batch or the list.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch

from models.base.inference import Failure, InferenceError, output_name, read_test_list
from models.tts.valle.valle import VALLE
from text.g2p import phonemize
from text.symbol_table import TextTokenizer
from utils.audio import AudioError, load_audio
from utils.checkpoint import CheckpointError, CheckpointSource, resolve_checkpoint
from utils.checkpoint_average import average_weights, checkpoints_to_average
from utils.config import (
    Config,
    InferenceConfig,
    ModelConfig,
    config_from_dict,
    read_json5,
    resolve_path,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Where the weights come from
# --------------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """One VALL-E to run: its weights and everything that must match them."""

    kind: str  # "experiment" (ours), "checkpoint" (one of our checkpoint folders) or "release"
    root: Path  # experiment or release folder
    weights: Path  # model.safetensors or pytorch_model.bin
    symbols: Path  # phone table the model was trained with
    cfg: Config  # .model = architecture of the weights, .preprocess = G2P / codec settings
    checkpoints: tuple[Path, ...] = ()  # averaged checkpoint folders (--infer_avg); () = weights

    def describe(self) -> str:
        return f"{self.kind} {self.root} (weights {self.weights})"


def _known_config(data: dict, source: Path) -> Config:
    """Validate a saved config, leaving out top-level keys we do not know (e.g. extras)."""
    names = {f.name for f in dataclasses.fields(Config)}
    extra = sorted(set(data) - names)
    if extra:
        log.debug("%s: not config keys, ignored: %s", source, ", ".join(extra))
    return config_from_dict({k: v for k, v in data.items() if k in names}, str(source))


def _model_config(section: dict, source: Path) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        log.warning("%s: model keys this toolkit does not use, ignored: %s", source, unknown)
    return config_from_dict(
        {"model": {k: v for k, v in section.items() if k in known}}, str(source)
    ).model


def _experiment_config(found: CheckpointSource) -> Config:
    """Our experiment's saved config, with the model section that describes the checkpoint."""
    if not found.config.is_file():
        raise InferenceError(
            f"{found.folder}: the experiment folder {found.root} has no config.json "
            "(stage 2 writes it next to checkpoint/)"
        )
    cfg = _known_config(read_json5(found.config), found.config)
    model = _model_config(found.model, found.model_file)  # meta.json wins over config.json
    if model != cfg.model:
        log.info("%s: using the model section of meta.json (differs from %s)", found.folder,
                 found.config)  # fmt: skip
    return dataclasses.replace(cfg, model=model)


def _release_config(found: CheckpointSource, recipe_cfg: Config) -> Config:
    """A release's model section (args.json) with the recipe's front end and decoding."""
    args = read_json5(found.config)
    other = sorted(k for k in args if k != "model")
    log.info("%s: using its 'model' section; ignoring the rest (%s)", found.config,
             ", ".join(other))  # fmt: skip
    mode = found.model.get("prefix_mode")  # how its NAR was trained and is prompted (README)
    mode = "unknown (not in args.json; the default 0 is used)" if mode is None else mode
    log.info("%s: model.prefix_mode %s", found.config, mode)
    extractor = args.get("preprocess", {}).get("phone_extractor", "espeak")
    if extractor != "espeak":
        raise InferenceError(
            f"{found.config}: preprocess.phone_extractor is {extractor!r}; only espeak phones "
            "are supported (the release's symbols.dict would not match our G2P)"
        )
    return dataclasses.replace(recipe_cfg, model=_model_config(found.model, found.config))


def find_model_source(
    path: str | os.PathLike, which: str, recipe_cfg: Config, avg: str = "1"
) -> ModelSource:
    """Resolve --expt_dir: our experiment, one of our checkpoint folders, or an Amphion release
    (the rules of `utils.checkpoint.resolve_checkpoint`, shared with training).

    `which` ("latest" or "best") picks an experiment's checkpoint; `avg` (--infer_avg) the
    checkpoints whose mean is used (`utils.checkpoint_average`). `recipe_cfg` supplies the
    front-end settings of a release, which ships only Amphion's own config.
    """
    try:
        found = resolve_checkpoint(path, which)
    except CheckpointError as e:  # a wrong --expt_dir, not a broken file: stage 3's own error
        raise InferenceError(f"--expt_dir: {e}") from None
    checkpoints = tuple(checkpoints_to_average(found, avg))
    if found.kind == "release":
        cfg = _release_config(found, recipe_cfg)
    else:
        cfg = _experiment_config(found)
    symbols = found.root / "symbols.dict"
    if not symbols.is_file():
        raise InferenceError(
            f"{found.root}: no symbols.dict (the phone table the model was trained with)"
        )
    return ModelSource(found.kind, found.root, found.weights, symbols, cfg, checkpoints)


def load_codec(source: ModelSource, device: torch.device | str = "cpu"):
    """The codec the model's codes were made with (see models/codec/encodec.py)."""
    from models.codec.encodec import CodecTokenizer

    pre = source.cfg.preprocess
    if source.kind == "release":  # trained on the official 24 kHz EnCodec (or a local copy)
        return CodecTokenizer.from_config(pre, device)
    return CodecTokenizer.from_processed_dir(resolve_path(pre.processed_dir), device)


def load_model(source: ModelSource, device: torch.device | str = "cpu"):
    """Build the VALL-E described by `source` and load its weights (never running pickled code)."""
    state = average_weights(source.checkpoints or [source.weights.parent])  # safe loading
    model = VALLE(source.cfg.model)
    try:
        model.load_amphion_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as e:
        raise InferenceError(
            f"{source.weights}: the weights do not fit the model described by its config "
            f"({source.kind} {source.root}): {e}"
        ) from None
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# What to synthesise
# --------------------------------------------------------------------------------------------


@dataclass
class Utterance:
    """One request: speak `text` in the voice of `audio_prompt` (transcript: text_prompt)."""

    name: str  # output file stem
    text: str  # "" in continual mode
    text_prompt: str
    audio_prompt: Path
    line: int | None = None  # line number in the test list (batch mode)

    def fields(self) -> dict:
        return {"text": self.text, "text_prompt": self.text_prompt,
                "audio_prompt": str(self.audio_prompt)}  # fmt: skip


_AUDIO_EXTENSIONS = {f".{fmt.lower()}" for fmt in soundfile.available_formats()} | {".oga"}


def _is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in _AUDIO_EXTENSIONS and path.is_file()


def parse_test_list(
    path: str | os.PathLike, continual: bool = False
) -> tuple[list[Utterance], list[Failure]]:
    """Parse a test list; bad lines become Failures (with line numbers), good lines Utterances.

    Line formats (fields split on `|`, then stripped):
      text|text_prompt|audio_prompt[|name]     (the original README's order)
      text_prompt|audio_prompt|text[|name]     (the order the original code reads)
      text_prompt|audio_prompt[|name]          (continual mode)
    The order is recognised by which field is an existing audio file; relative audio paths are
    relative to the list file. Blank lines and lines starting with `#` are skipped.
    """
    return read_test_list(path, lambda raw, lineno, base: _parse_line(raw, lineno, base, continual))


def _parse_line(raw: str, lineno: int, base: Path, continual: bool) -> Utterance:
    fields = [f.strip() for f in raw.split("|")]
    n_core = 2 if continual else 3
    expected = (
        "text_prompt|audio_prompt"
        if continual
        else ("text|text_prompt|audio_prompt or text_prompt|audio_prompt|text")
    )
    if len(fields) not in (n_core, n_core + 1):
        raise InferenceError(
            f"{len(fields)} '|'-separated fields; expected {expected} (+ optional |name)"
        )
    core = fields[:n_core]
    paths = [Path(f).expanduser() for f in core]
    paths = [p if p.is_absolute() else base / p for p in paths]
    audio_at = [i for i, p in enumerate(paths) if core[i] and _is_audio_file(p)]
    # Where the audio may be: continual (prompt|audio) index 1; otherwise README order index 2,
    # code order index 1.
    allowed = {1} if continual else {1, 2}
    audio_at = [i for i in audio_at if i in allowed]
    if len(audio_at) > 1:
        raise InferenceError(
            f"ambiguous field order: both {core[1]!r} and {core[2]!r} are existing audio files, "
            "so it is unclear which is the audio prompt; make only the audio_prompt field a file"
        )
    if not audio_at:
        looks_like_audio = [
            core[i] for i in sorted(allowed) if Path(core[i]).suffix.lower() in _AUDIO_EXTENSIONS
        ]
        if looks_like_audio:
            missing = ", ".join(str(paths[core.index(f)]) for f in looks_like_audio)
            raise InferenceError(f"audio prompt not found: {missing}")
        raise InferenceError(f"no field is an existing audio file; expected {expected}")
    audio = audio_at[0]
    if continual:
        text_prompt, text = core[0], ""
    elif audio == 2:
        text, text_prompt = core[0], core[1]
    else:
        text_prompt, text = core[0], core[2]
    if not text_prompt:
        raise InferenceError("empty text_prompt (the transcript of the audio prompt)")
    if not continual and not text:
        raise InferenceError("empty text (nothing to synthesise)")
    name = output_name(fields[n_core] if len(fields) > n_core else None, lineno)
    return Utterance(name, text, text_prompt, paths[audio], lineno)


# --------------------------------------------------------------------------------------------
# Text and audio -> model input
# --------------------------------------------------------------------------------------------


class TextFrontend:
    """Text -> phone ids with the checkpoint's G2P settings and symbol table.

    As in Amphion's `VALLEInference.inference_one_clip`, the prompt transcript and the target
    text are joined into one string `f"{text_prompt} {text}".strip()` and phonemized together
    (so espeak sees the sentence boundary as written), then `<bos> phones <eos>`. The length of
    the prompt part (`enroll_text_len`) is that of the prompt transcript phonemized on its own,
    with its own `<bos>`/`<eos>`.
    """

    def __init__(self, symbols: Path, language: str, drop_unknown: bool):
        self.tokenizer = TextTokenizer.from_file(symbols)
        self.symbols = symbols
        self.language = language
        self.drop_unknown = drop_unknown

    def encode(self, text_prompt: str, text: str) -> tuple[list[int], int]:
        """(ids of prompt + text, number of ids that belong to the prompt)."""
        joined = f"{text_prompt} {text}".strip()
        phones, prompt_phones = phonemize([joined, text_prompt], self.language)
        ids = self._ids(phones, joined)
        return ids, len(self._ids(prompt_phones, text_prompt))

    def _ids(self, phones: list[str], text: str) -> list[int]:
        if not phones:
            raise InferenceError(f"no phones from text {text!r} (empty after G2P)")
        unknown = self.tokenizer.unknown_phones(phones)
        if unknown and not self.drop_unknown:
            raise InferenceError(
                f"phone {unknown[0]!r} of text {text!r} is not in the symbol table "
                f"{self.symbols} (unknown: {unknown}); set inference.drop_unknown_phones to "
                "true to drop such phones"
            )
        if unknown:
            log.warning("dropping phones %s of text %r: not in %s", unknown, text, self.symbols)
            phones = [p for p in phones if p not in unknown]
        return self.tokenizer.encode(phones)


def load_prompt(path: Path, sample_rate: int, max_seconds: float, trim: bool) -> torch.Tensor:
    """Prompt audio as 1-D float at `sample_rate` (mono).

    A prompt longer than max_seconds is refused (InferenceError), because cutting the audio
    leaves its transcript describing audio the model no longer sees; with `trim` (the user's
    explicit inference.trim_long_prompts) it is cut to its first max_seconds, with a warning.
    """
    try:
        wav = load_audio(path, sample_rate)
    except AudioError as e:
        raise InferenceError(f"audio prompt {e}") from None
    limit = int(max_seconds * sample_rate)
    if wav.numel() <= limit:
        return wav
    seconds = wav.numel() / sample_rate
    if not trim:
        raise InferenceError(
            f"audio prompt {path} is {seconds:.2f} s, longer than inference.max_prompt_seconds "
            f"= {max_seconds:.2f} s; cutting only the audio would leave its transcript "
            "(text_prompt) describing audio the model no longer hears. Cut the prompt (about "
            "3 s is typical) and give the transcript of the part you keep, or set "
            "inference.trim_long_prompts = true (run.sh --infer_trim_long_prompts true) to use "
            f"its first {max_seconds:.2f} s when text_prompt is the transcript of that part"
        )
    log.warning("audio prompt %s is %.2f s, longer than inference.max_prompt_seconds = %.2f s: "
                "using its first %.2f s (inference.trim_long_prompts); text_prompt must be its "
                "transcript", path, seconds, max_seconds, max_seconds)  # fmt: skip
    return wav[:limit]


# --------------------------------------------------------------------------------------------
# Batched synthesis
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    utt: Utterance
    text_ids: list[int]  # prompt text + target text, with <bos>/<eos>
    enroll_text_len: int  # ids of the prompt text part
    prompt_codes: torch.Tensor  # (P, Q) int64

    @property
    def length(self) -> tuple[int, int]:
        """Expected work: grows with the target text (generated frames) and the prompt."""
        return len(self.text_ids) - self.enroll_text_len, self.prompt_codes.shape[0]


def frame_caps(text_lens: list[int], inf: InferenceConfig, frame_rate: float) -> list[int]:
    """Per-item cap on generated frames: the smallest of the configured limits.

    `max_frames_per_phone * text_len + 1` is the original rule (Amphion stops once more than
    16 * text_len frames were generated); `max_frames`, `max_seconds` are absolute caps (0 = off).
    """
    caps = []
    for n in text_lens:
        cap = int(inf.max_frames_per_phone * n) + 1
        if inf.max_frames > 0:
            cap = min(cap, inf.max_frames)
        if inf.max_seconds > 0:
            cap = min(cap, max(1, int(inf.max_seconds * frame_rate)))
        caps.append(cap)
    return caps


class Synthesizer:
    """VALL-E's `models.base.inference.Synthesis`: a loaded model + front end + codec."""

    def __init__(
        self, model, source: ModelSource, codec, inf: InferenceConfig, device: torch.device
    ):
        self.model = model
        self.source = source
        self.codec = codec
        self.inf = inf
        self.device = torch.device(device)
        pre = source.cfg.preprocess
        self.sample_rate = pre.sample_rate
        self.frame_rate = pre.sample_rate / pre.codec_hop_size
        self.frontend = TextFrontend(source.symbols, pre.phone_language, inf.drop_unknown_phones)
        vocab = self.frontend.tokenizer.vocab_size
        if vocab > source.cfg.model.text_token_num:
            raise InferenceError(
                f"{source.symbols} gives {vocab} text tokens but the model has only "
                f"text_token_num = {source.cfg.model.text_token_num}: wrong symbols.dict for it"
            )

    def prepare(self, utts: list[Utterance]) -> list[Prepared | InferenceError]:
        """Phonemize texts and tokenize prompts; an item that fails is an error, not fatal.

        On a GPU prompts are tokenized batch_size at a time (the codec's batched codes equal
        its one-by-one codes, see models/codec/encodec.py); on a CPU one at a time, which
        measured faster there (bench/inference_batch.py).
        """
        out: list[Prepared | InferenceError] = []
        chunk = self.inf.batch_size if self.device.type == "cuda" else 1
        for i in range(0, len(utts), chunk):
            part = utts[i : i + chunk]
            loaded = [self._load(utt) for utt in part]  # (ids, enroll_text_len, wav) or an error
            wavs = [x[2].to(self.device) for x in loaded if not isinstance(x, InferenceError)]
            all_codes = iter(self.codec.encode(wavs))
            for utt, x in zip(part, loaded, strict=True):
                out.append(x if isinstance(x, InferenceError) else self._item(utt, x, all_codes))
        return out

    def _load(self, utt: Utterance) -> tuple[list[int], int, torch.Tensor] | InferenceError:
        try:
            ids, enroll_text_len = self.frontend.encode(utt.text_prompt, utt.text)
            inf = self.inf
            wav = load_prompt(utt.audio_prompt, self.sample_rate, inf.max_prompt_seconds,
                              inf.trim_long_prompts)  # fmt: skip
        except InferenceError as e:
            return e
        return ids, enroll_text_len, wav

    def _item(self, utt: Utterance, loaded: tuple, all_codes) -> Prepared | InferenceError:
        ids, enroll_text_len, _ = loaded
        codes = next(all_codes)
        if self.inf.continual and codes.shape[0] < 2:
            return InferenceError(
                f"audio prompt {utt.audio_prompt} is {codes.shape[0]} codec frame(s): "
                "continual mode needs at least 2 (it redoes the prompt's second half)"
            )
        q = self.source.cfg.model.num_quantizers
        return Prepared(utt, ids, enroll_text_len, codes[:, :q].long().cpu())

    def record(self, item: Prepared) -> dict:
        return {"prompt_frames": int(item.prompt_codes.shape[0]), "text_ids": len(item.text_ids)}

    def generate(
        self, batch: list[Prepared], seeds: list[int]
    ) -> tuple[list[torch.Tensor], list[str]]:
        """One model.generate call for a batch (right-padded text and prompt codes).

        Each utterance samples from its own generator (seeded with its seed), so its output
        does not depend on the batch it lands in."""
        dev = self.device
        text_lens = torch.tensor([len(p.text_ids) for p in batch], device=dev)
        text = torch.zeros(len(batch), int(text_lens.max()), dtype=torch.long, device=dev)
        for i, p in enumerate(batch):
            text[i, : len(p.text_ids)] = torch.tensor(p.text_ids, device=dev)
        prompt_lens = torch.tensor([p.prompt_codes.shape[0] for p in batch], device=dev)
        q = batch[0].prompt_codes.shape[1]
        prompts = torch.zeros(len(batch), int(prompt_lens.max()), q, dtype=torch.long, device=dev)
        for i, p in enumerate(batch):
            prompts[i, : p.prompt_codes.shape[0]] = p.prompt_codes.to(dev)
        caps = frame_caps([len(p.text_ids) for p in batch], self.inf, self.frame_rate)
        result = self.model.generate(
            text,
            text_lens,
            prompts,
            prompt_lens,
            torch.tensor([p.enroll_text_len for p in batch], device=dev),
            top_k=self.inf.top_k,
            top_p=self.inf.top_p,
            temperature=self.inf.temperature,
            generator=[torch.Generator(device=dev).manual_seed(seed) for seed in seeds],
            max_new_frames=torch.tensor(caps, device=dev),
            min_new_frames=self.inf.min_frames,
            continual=self.inf.continual,
            use_kv_cache=self.inf.use_kv_cache,
            item_names=[
                p.utt.name if p.utt.line is None else f"line {p.utt.line} ({p.utt.name})"
                for p in batch
            ],
        )
        return result.codes, result.stop_reasons

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(G, Q) codes -> 1-D waveform of G * hop samples (decoded alone: batch-independent)."""
        if codes.shape[0] == 0:
            return torch.zeros(0)
        wav = self.codec.decode(codes[None].to(self.device))  # (1, samples)
        return wav[0, : codes.shape[0] * self.source.cfg.preprocess.codec_hop_size].float().cpu()
