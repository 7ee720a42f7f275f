"""Zero-shot VALL-E inference (recipe stage 3): find the weights, read test lists, synthesise.

Reading order: where the weights come from (`find_model_source`, `load_model`), what is
synthesised (`Utterance`, `parse_test_list`), how text and audio become model input
(`TextFrontend`, `load_prompt`), and the batched decoding + output writing (`Synthesizer`).

Which config is used for what:
* the architecture (`model`) and the front end (`preprocess`: G2P language, codec) come with the
  weights: the experiment's saved `config.json` (+ the checkpoint's `meta.json`, which wins for
  `model`), or a release's `args.json` (`model` section; G2P/codec from the recipe config);
* decoding (`inference`: top_k, top_p, temperature, seed, batch size, caps, ...) comes from the
  recipe config given with `--config` plus the command-line overrides. A saved experiment config's
  own `inference` section is never used, so the same command line means the same decoding for
  any checkpoint.

Sampling: every utterance has its own generator, seeded by `utterance_seed(inference.seed, name)`,
so its output does not depend on the batch size, the list order or the other lines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch
from tqdm import tqdm

from models.tts.valle.valle import VALLE
from text.g2p import phonemize
from text.symbol_table import TextTokenizer
from utils.audio import AudioError, load_audio, save_audio
from utils.checkpoint import (
    checkpoint_order,
    find_weights_file,
    list_checkpoints,
    load_tensor_file,
    read_best,
    read_meta,
)
from utils.config import Config, InferenceConfig, ModelConfig, config_from_dict, read_json5

log = logging.getLogger(__name__)


RESULTS = "results.jsonl"  # one line per utterance or failure, in each run folder


class InferenceError(RuntimeError):
    """Inference cannot go on; the message names the file / line / phone and what to do."""


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


def _best_checkpoint(exp_dir: Path) -> Path:
    best = read_best(exp_dir)
    if best is None:
        raise InferenceError(
            f"{exp_dir}: no 'best' file naming an existing checkpoint folder (training writes it "
            "after a validation); use --checkpoint latest"
        )
    return best


def _our_checkpoint(ckpt_dir: Path, exp_dir: Path, kind: str) -> ModelSource:
    config_path = exp_dir / "config.json"
    if not config_path.is_file():
        raise InferenceError(
            f"{ckpt_dir}: the experiment folder {exp_dir} has no config.json "
            "(stage 2 writes it next to checkpoint/)"
        )
    cfg = _known_config(read_json5(config_path), config_path)
    meta = read_meta(ckpt_dir)
    if "model" in meta:  # the checkpoint describes itself; it wins over the experiment config
        meta_model = _model_config(meta["model"], ckpt_dir / "meta.json")
        if meta_model != cfg.model:
            log.info(
                "%s: using the model section of meta.json (differs from %s)", ckpt_dir, config_path
            )
        cfg = dataclasses.replace(cfg, model=meta_model)
    weights = find_weights_file(ckpt_dir)
    if weights is None:
        raise InferenceError(f"{ckpt_dir}: no model.safetensors in this checkpoint folder")
    return ModelSource(kind, exp_dir, weights, _symbols_of(exp_dir), cfg)


def _symbols_of(root: Path) -> Path:
    path = root / "symbols.dict"
    if not path.is_file():
        raise InferenceError(
            f"{root}: no symbols.dict (the phone table the model was trained with)"
        )
    return path


def _release(root: Path, which: str, recipe_cfg: Config, folder: Path | None = None) -> ModelSource:
    """A released Amphion folder; `folder` = one of its checkpoint folders (default: newest)."""
    args_path = root / "args.json"
    args = read_json5(args_path)
    if not isinstance(args.get("model"), dict):
        raise InferenceError(f"{args_path}: no 'model' section; is this an Amphion VALL-E release?")
    other = sorted(k for k in args if k != "model")
    log.info("%s: using its 'model' section; ignoring the rest (%s)", args_path, ", ".join(other))
    mode = args["model"].get("prefix_mode")  # how its NAR was trained and is prompted (README)
    mode = "unknown (not in args.json; the default 0 is used)" if mode is None else mode
    log.info("%s: model.prefix_mode %s", args_path, mode)
    extractor = args.get("preprocess", {}).get("phone_extractor", "espeak")
    if extractor != "espeak":
        raise InferenceError(
            f"{args_path}: preprocess.phone_extractor is {extractor!r}; only espeak phones are "
            "supported (the release's symbols.dict would not match our G2P)"
        )
    candidates = [[folder]] if folder else [(root / "checkpoint").glob("*"), [root]]
    folders = [p for group in candidates for p in group if p.is_dir() and find_weights_file(p)]
    if not folders:
        raise InferenceError(
            f"{root}: no checkpoint/<name>/pytorch_model.bin or model.safetensors "
            "(see bins/tts/download.py for the release layout)"
        )
    folders.sort(key=checkpoint_order)  # newest (by step in the name) last
    if which == "best" and folder is None and len(folders) > 1:
        log.info("%s: a release has no 'best' marker; using the newest checkpoint", root)
    cfg = dataclasses.replace(recipe_cfg, model=_model_config(args["model"], args_path))
    return ModelSource("release", root, find_weights_file(folders[-1]), _symbols_of(root), cfg)


def find_model_source(path: str | os.PathLike, which: str, recipe_cfg: Config) -> ModelSource:
    """Resolve --expt_dir: our experiment, one of our checkpoint folders, or an Amphion release.

    `which` ("latest" or "best") picks an experiment's checkpoint. `recipe_cfg` supplies the
    front-end settings of a release, which ships only Amphion's own config.
    """
    path = Path(path)
    if not path.is_dir():
        raise InferenceError(f"--expt_dir {path}: not a folder")
    if (path / "args.json").is_file():
        return _release(path, which, recipe_cfg)
    if find_weights_file(path) and not (path / "meta.json").is_file():  # a release's checkpoint
        for root in (path.parent.parent, path.parent):
            if (root / "args.json").is_file():
                return _release(root, which, recipe_cfg, folder=path)
    if (path / "meta.json").is_file():
        exp_dir = path.parent.parent if path.parent.name == "checkpoint" else path.parent
        return _our_checkpoint(path, exp_dir, "checkpoint")
    if (path / "config.json").is_file():
        if which == "best":
            ckpt = _best_checkpoint(path)
        else:
            found = list_checkpoints(path)
            if not found:
                raise InferenceError(f"{path}: no checkpoint folders in {path / 'checkpoint'} yet")
            ckpt = found[-1]
        return _our_checkpoint(ckpt, path, "experiment")
    raise InferenceError(
        f"{path}: neither an experiment (config.json + checkpoint/), a checkpoint folder "
        "(meta.json + model.safetensors) nor a released Amphion VALL-E (args.json + "
        "symbols.dict + checkpoint/<name>/pytorch_model.bin)"
    )


def load_model(source: ModelSource, device: torch.device | str = "cpu"):
    """Build the VALL-E described by `source` and load its weights (never running pickled code)."""
    state = load_tensor_file(source.weights)  # CheckpointError for unsafe / broken files
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

    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else "the command line"


@dataclass
class Failure:
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


_AUDIO_EXTENSIONS = {f".{fmt.lower()}" for fmt in soundfile.available_formats()} | {".oga"}
_NAME_RE = re.compile(r"^[\w.+=-]+$")


def _is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in _AUDIO_EXTENSIONS and path.is_file()


def safe_name(text: str, max_len: int = 40) -> str:
    """A file stem made of the first words of free text ("Hello, world!" -> "hello_world")."""
    stem = ""
    for word in re.findall(r"\w+", text.lower()):
        if stem and len(stem) + 1 + len(word) > max_len:
            break
        stem = f"{stem}_{word}" if stem else word[:max_len]
    return stem or "pred"


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
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InferenceError(f"test list {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise InferenceError(f"test list {path}: not UTF-8 text ({e})") from None
    utterances: list[Utterance] = []
    failures: list[Failure] = []
    names: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            utt = _parse_line(raw, lineno, path.parent, continual)
        except InferenceError as e:
            failures.append(Failure(lineno, str(e)))
            continue
        if utt.name in names:
            failures.append(
                Failure(
                    lineno, f"output name {utt.name!r} is already used by line {names[utt.name]}"
                )
            )
            continue
        names[utt.name] = lineno
        utterances.append(utt)
    return utterances, failures


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
    name = fields[n_core] if len(fields) > n_core else str(lineno)
    name = name[:-4] if name.lower().endswith(".wav") else name
    if not _NAME_RE.match(name):
        raise InferenceError(
            f"output name {name!r} must be a plain file name (letters, digits, _.-)"
        )
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
    log.warning(
        "audio prompt %s is %.2f s, longer than inference.max_prompt_seconds = %.2f s: using "
        "its first %.2f s (inference.trim_long_prompts); text_prompt must be its transcript",
        path,
        seconds,
        max_seconds,
        max_seconds,
    )
    return wav[:limit]


def utterance_seed(seed: int, name: str) -> int:
    """The sampling seed of one utterance: a hash of the run's seed and the output name, so an
    utterance draws the same numbers at any batch size, list order or in a partial re-run."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: a valid manual_seed


# --------------------------------------------------------------------------------------------
# Batched synthesis
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    utt: Utterance
    text_ids: list[int]  # prompt text + target text, with <bos>/<eos>
    enroll_text_len: int  # ids of the prompt text part
    prompt_codes: torch.Tensor  # (P, Q) int64


@dataclass
class Result:
    utt: Utterance
    output: Path
    frames: int
    seconds: float
    stop_reason: str  # "eos", "cap" or "continual" (no AR loop)
    wall_time: float  # seconds the item's batch took (generation + decoding + writing)
    rtf: float  # wall_time / seconds of audio produced by that batch
    batch_size: int  # items decoded together with this one
    prompt_frames: int  # codec frames of the (trimmed) audio prompt
    text_ids: int  # phone ids of prompt text + text, with <bos>/<eos>
    seed: int  # this utterance's sampling seed (utterance_seed)

    def record(self) -> dict:
        return {
            "name": self.utt.name,
            "line": self.utt.line,
            "text": self.utt.text,
            "text_prompt": self.utt.text_prompt,
            "audio_prompt": str(self.utt.audio_prompt),
            "output": str(self.output),
            "seconds": round(self.seconds, 4),
            "frames": self.frames,
            "stop_reason": self.stop_reason,
            "wall_time": round(self.wall_time, 4),
            "rtf": round(self.rtf, 4),
            "batch_size": self.batch_size,
            "prompt_frames": self.prompt_frames,
            "text_ids": self.text_ids,
            "seed": self.seed,
        }


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


def batches(items: list[Prepared], batch_size: int) -> Iterator[list[Prepared]]:
    """Batches of similar expected length, longest first (an out-of-memory shows at once).

    Expected work grows with the target text (generated frames) and the prompt (context).
    """
    order = sorted(
        items,
        key=lambda p: (len(p.text_ids) - p.enroll_text_len, p.prompt_codes.shape[0]),
        reverse=True,
    )
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


class Synthesizer:
    """A loaded model + front end + codec, turning Utterances into wav files."""

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
        # seconds spent in: G2P + prompt tokenization, model.generate, codec decoding + writing
        self.timings = {"prepare": 0.0, "generate": 0.0, "decode": 0.0}

    def prepare(self, utts: list[Utterance]) -> tuple[list[Prepared], list[Failure]]:
        """Phonemize texts and tokenize prompts; an item that fails is reported, not fatal.

        On a GPU prompts are tokenized batch_size at a time (the codec's batched codes equal
        its one-by-one codes, see models/codec/encodec.py); on a CPU one at a time, which
        measured faster there (bench/inference_batch.py).
        """
        prepared, failures = [], []
        q = self.source.cfg.model.num_quantizers
        chunk = self.inf.batch_size if self.device.type == "cuda" else 1
        for i in range(0, len(utts), chunk):
            loaded = []  # (utt, ids, enroll_text_len, wav)
            for utt in utts[i : i + chunk]:
                try:
                    ids, enroll_text_len = self.frontend.encode(utt.text_prompt, utt.text)
                    wav = load_prompt(
                        utt.audio_prompt,
                        self.sample_rate,
                        self.inf.max_prompt_seconds,
                        self.inf.trim_long_prompts,
                    )
                except InferenceError as e:
                    failures.append(Failure(utt.line, str(e)))
                    continue
                loaded.append((utt, ids, enroll_text_len, wav))
            all_codes = self.codec.encode([wav.to(self.device) for *_, wav in loaded])
            for (utt, ids, enroll_text_len, _), codes in zip(loaded, all_codes, strict=True):
                if self.inf.continual and codes.shape[0] < 2:
                    failures.append(
                        Failure(
                            utt.line,
                            f"audio prompt {utt.audio_prompt} is {codes.shape[0]} codec frame(s): "
                            "continual mode needs at least 2 (it redoes the prompt's second half)",
                        )
                    )
                    continue
                prepared.append(Prepared(utt, ids, enroll_text_len, codes[:, :q].long().cpu()))
        return prepared, failures

    def seed_of(self, utt: Utterance) -> int:
        return utterance_seed(self.inf.seed, utt.name)

    def generate(self, batch: list[Prepared]):
        """One model.generate call for a batch (right-padded text and prompt codes).

        Each utterance samples from its own generator (seed_of), so its output does not depend
        on the batch it lands in."""
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
        return self.model.generate(
            text,
            text_lens,
            prompts,
            prompt_lens,
            torch.tensor([p.enroll_text_len for p in batch], device=dev),
            top_k=self.inf.top_k,
            top_p=self.inf.top_p,
            temperature=self.inf.temperature,
            generator=[torch.Generator(device=dev).manual_seed(self.seed_of(p.utt)) for p in batch],
            max_new_frames=torch.tensor(caps, device=dev),
            min_new_frames=self.inf.min_frames,
            continual=self.inf.continual,
            use_kv_cache=self.inf.use_kv_cache,
            item_names=[
                p.utt.name if p.utt.line is None else f"line {p.utt.line} ({p.utt.name})"
                for p in batch
            ],
        )

    def run(
        self,
        utts: list[Utterance],
        out_dir: Path,
        on_result: Callable[[Result], None],
        progress: bool = True,
    ) -> list[Failure]:
        """Synthesise every utterance into out_dir/<name>.wav; returns the failed ones."""
        start = time.perf_counter()
        prepared, failures = self.prepare(utts)
        self.timings["prepare"] += time.perf_counter() - start
        bar = tqdm(total=len(prepared), desc="synthesis", unit="utt", disable=not progress)
        for batch in batches(prepared, self.inf.batch_size):
            start = time.perf_counter()
            result = self.generate(batch)
            generated = time.perf_counter()
            wavs = [self._decode(codes) for codes in result.codes]
            outputs = [
                save_audio(out_dir / f"{p.utt.name}.wav", w, self.sample_rate)
                for p, w in zip(batch, wavs, strict=True)
            ]
            wall = time.perf_counter() - start
            self.timings["generate"] += generated - start
            self.timings["decode"] += wall - (generated - start)
            audio_seconds = sum(w.numel() for w in wavs) / self.sample_rate
            for p, codes, reason, wav, output in zip(
                batch, result.codes, result.stop_reasons, wavs, outputs, strict=True
            ):
                on_result(
                    Result(
                        p.utt,
                        output,
                        frames=int(codes.shape[0]),
                        seconds=wav.numel() / self.sample_rate,
                        stop_reason=reason,
                        wall_time=wall,
                        rtf=wall / audio_seconds if audio_seconds > 0 else math.inf,
                        batch_size=len(batch),
                        prompt_frames=int(p.prompt_codes.shape[0]),
                        text_ids=len(p.text_ids),
                        seed=self.seed_of(p.utt),
                    )
                )
            bar.update(len(batch))
        bar.close()
        return failures

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(G, Q) codes -> 1-D waveform of G * hop samples (decoded alone: batch-independent)."""
        if codes.shape[0] == 0:
            return torch.zeros(0)
        wav = self.codec.decode(codes[None].to(self.device))  # (1, samples)
        return wav[0, : codes.shape[0] * self.source.cfg.preprocess.codec_hop_size].float().cpu()


# --------------------------------------------------------------------------------------------
# Output folders
# --------------------------------------------------------------------------------------------


def claim_run_dir(output_dir: Path, mode: str, overwrite: bool) -> Path:
    """OUT/<mode>, or OUT/<mode>-2, -3, ... when that holds an earlier run (unless overwrite).

    A folder is claimed by creating its results.jsonl exclusively (O_EXCL): of two runs started
    together only one can, so they never share a folder. An empty folder (a run that stopped
    before it claimed) is taken; one holding anything is not. With overwrite, OUT/<mode> is
    taken whatever it holds (the user's explicit choice).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    first = output_dir / mode
    if overwrite:
        first.mkdir(exist_ok=True)
        return first
    n = 0
    while True:
        n += 1
        candidate = first if n == 1 else output_dir / f"{mode}-{n}"
        candidate.mkdir(exist_ok=True)
        if any(candidate.iterdir()):
            continue  # an earlier (or a concurrent) run's folder
        try:
            (candidate / RESULTS).touch(exist_ok=False)
        except FileExistsError:
            continue  # another run claimed it between our two looks
        return candidate


def write_jsonl_line(handle, record: dict) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
