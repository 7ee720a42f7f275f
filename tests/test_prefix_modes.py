"""NAR prefix modes 2 and 4 against Amphion's own code, and the mode-4 prompt supply.

Fixtures ../shared/fixtures/amphion_valle_prefix2 and amphion_valle_prefix4 (README in each):
- expected.pt: what Amphion computes (AR loss/logits, greedy inference, which strips the prompt
  text for the NAR via enroll_x_lens);
- expected_patched.pt: NAR *training* values of Amphion's code with the two minimal fixes that
  lifeiteng/vall-e has (Amphion itself raises in both modes: NUM_AUDIO_TOKENS undefined / no
  prompt, then a padding mask without the prompt part). Those are our reference there.

The second half checks the data side of mode 4 (dataset.SpeakerPrompts): each utterance is
prompted by a chunk of another utterance of the same speaker, seeded and resumable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.features.io import NumpyFilesWriter
from test_inference_release import make_release
from test_valle_model import _one_thread, assert_close_rel  # noqa: F401 (autouse fixture)

from models.tts.valle.dataset import SpeakerPrompts, VALLEDataset, make_dataloader
from models.tts.valle.inference import find_model_source
from models.tts.valle.valle import VALLE
from text.symbol_table import TextTokenizer
from utils.config import REPO_ROOT, Config, ModelConfig, load_config, read_json5

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"
MODES = (2, 4)
STAGES = range(1, 8)


@pytest.fixture(scope="module", params=MODES, ids=lambda m: f"prefix{m}")
def oracle(request) -> dict:
    folder = FIXTURES / f"amphion_valle_prefix{request.param}"
    if not folder.is_dir():
        pytest.skip(f"Amphion fixture not found at {folder}")
    cfg = json.loads((folder / "config.json").read_text())
    model = VALLE(ModelConfig(**cfg["model"]))
    model.load_amphion_state_dict(torch.load(folder / "state_dict.pt", weights_only=True))
    return {
        "mode": request.param,
        "cfg": cfg,
        "model": model.eval(),
        "inputs": torch.load(folder / "inputs.pt", weights_only=True),
        "expected": torch.load(folder / "expected.pt", weights_only=True),
        "patched": torch.load(folder / "expected_patched.pt", weights_only=True),
    }


def capture(layer: torch.nn.Module, outputs: list) -> torch.utils.hooks.RemovableHandle:
    return layer.register_forward_hook(lambda mod, args, out: outputs.append(out))


def mode4_prompt(oracle: dict) -> dict:
    inp = oracle["inputs"]
    return {"nar_prompt_codes": inp["y_prompts"]} if oracle["mode"] == 4 else {}


# ----------------------------------------------------------------- training (AR: Amphion as is)


def test_ar_loss_and_logits(oracle):
    inp, exp, model = oracle["inputs"], oracle["expected"], oracle["model"]
    logits: list = []
    handle = capture(model.ar_predict_layer, logits)
    with torch.no_grad():
        loss, metrics = model(inp["x"], inp["x_lens"], inp["y"], inp["y_lens"], 1,
                              **mode4_prompt(oracle))  # fmt: skip
    handle.remove()
    assert_close_rel(loss, exp["ar_loss_sum"])
    assert_close_rel(logits[0], exp["ar_logits"])
    assert metrics["ar_frames"] == inp["y_lens"].sum()


# ----------------------------------------------------------------- training (NAR: lifeiteng fixes)


@pytest.mark.parametrize("stage", STAGES)
def test_nar_loss_matches_amphion_with_lifeiteng_fixes(oracle, stage):
    """expected_patched.pt = Amphion + NUM_AUDIO_TOKENS defined + the prompt-aware padding mask
    (lifeiteng/vall-e's two lines); not a value Amphion itself produces."""
    inp, exp, model = oracle["inputs"], oracle["patched"], oracle["model"]
    draws: list = []
    draw = model._draw_span_starts

    def recording_draw(y_lens, prefix_len, generator):
        draws.append((prefix_len, draw(y_lens, prefix_len, generator)))
        return draws[-1][1]

    logits: list = []
    handle = capture(model.nar_predict_layers[stage - 1], logits)
    model._draw_span_starts = recording_draw
    # The fixture seeds both RNGs right before the call; the forced stage draws nothing.
    torch.manual_seed(oracle["cfg"]["seeds"]["nar_prefix_base"] + stage)
    model.rng.seed(oracle["cfg"]["seeds"]["nar_prefix_base"] + stage)
    try:
        with torch.no_grad():
            loss, metrics = model(inp["x"], inp["x_lens"], inp["y"], inp["y_lens"], 2,
                                  nar_stage=stage, **mode4_prompt(oracle))  # fmt: skip
    finally:
        del model._draw_span_starts
        handle.remove()
    assert_close_rel(loss, exp[f"nar_loss_sum_stage{stage}"])
    # Modes 2 and 4 put the prompt in front of the whole utterance: all T frames are predicted.
    assert logits[0].shape[1] == inp["y"].shape[1]
    if f"nar_logits_stage{stage}" in exp:
        assert_close_rel(logits[0], exp[f"nar_logits_stage{stage}"])
    assert torch.isclose(
        metrics["nar_top10_correct"], exp[f"nar_top10acc_x_frames_stage{stage}"], atol=1e-5
    )
    prefix_len = int(exp[f"nar_prefix_len_stage{stage}"])
    if oracle["mode"] == 2:
        assert draws == [(prefix_len, exp[f"nar_prompt_starts_stage{stage}"].tolist())]
    else:
        assert draws == [] and inp["y_prompts"].shape[1] == prefix_len  # no draw in mode 4


@pytest.mark.parametrize("oracle", [4], indirect=True, ids=["prefix4"])
def test_mode4_fixture_prompts_are_other_rows_and_required(oracle):
    inp, train = oracle["inputs"], oracle["cfg"]["train_prompts"]
    for b, (row, start) in enumerate(zip(train["source_row"], train["source_start"], strict=True)):
        assert row != b
        assert torch.equal(inp["y_prompts"][b], inp["y"][row, start : start + train["frames"]])
    with pytest.raises(ValueError, match="nar_prompt_codes"):
        oracle["model"](inp["x"], inp["x_lens"], inp["y"], inp["y_lens"], 2, nar_stage=1)


# ----------------------------------------------------------------- inference (Amphion as is)


def generate(model, texts, prompts, enroll, **kwargs):
    pad = torch.nn.utils.rnn.pad_sequence
    return model.generate(
        pad(texts, batch_first=True), torch.tensor([len(t) for t in texts]),
        pad(prompts, batch_first=True), torch.tensor([len(p) for p in prompts]),
        torch.tensor(enroll), **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_inference_strips_the_prompt_text(oracle, use_kv_cache):
    inp, exp, model = oracle["inputs"], oracle["expected"], oracle["model"]
    nar_text, ar_logits, nar_logits = [], [], []
    handles = [
        model.nar_text_embedding.register_forward_pre_hook(lambda m, a: nar_text.append(a[0])),
        capture(model.ar_predict_layer, ar_logits),
        capture(model.nar_predict_layers[0], nar_logits),
    ]
    try:
        result = generate(model, [inp["x1"][0]], [inp["y1"][0]], inp["enroll_x_lens"].tolist(),
                          use_kv_cache=use_kv_cache)  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(result.codes[0], exp["greedy_codes"][0])
    assert result.stop_reasons == ["eos"] and result.ar_steps == int(exp["greedy_ar_steps"])
    assert torch.equal(nar_text[0], exp["greedy_nar_text"])
    P, G = inp["y1"].shape[1], int(exp["greedy_num_frames"])
    assert_close_rel(nar_logits[0][:, P : P + G], exp["greedy_nar_logits_stage1"])
    assert_close_rel(ar_logits[0], exp["greedy_first_step_ar_logits"])
    assert_close_rel(ar_logits[-1], exp["greedy_last_step_ar_logits"])


def test_batched_inference_equals_alone(oracle):
    inp, exp, model = oracle["inputs"], oracle["expected"], oracle["model"]
    vocab = oracle["cfg"]["model"]["text_token_num"]
    g = torch.Generator().manual_seed(oracle["mode"])
    texts = [inp["x1"][0]] + [torch.randint(0, vocab, (n,), generator=g) for n in (7, 11, 5)]
    prompts = [inp["y1"][0]] + [torch.randint(0, 1024, (n, 8), generator=g) for n in (4, 9, 14)]
    enroll = [int(inp["enroll_x_lens"][0]), 3, 4, 2]
    caps = torch.tensor([200, 9, 30, 4])
    batched = generate(model, texts, prompts, enroll, max_new_frames=caps)
    uncached = generate(model, texts, prompts, enroll, max_new_frames=caps, use_kv_cache=False)
    assert torch.equal(batched.codes[0], exp["greedy_codes"][0])
    for b in range(len(texts)):
        alone = generate(model, texts[b : b + 1], prompts[b : b + 1], enroll[b : b + 1],
                         max_new_frames=int(caps[b]))  # fmt: skip
        assert torch.equal(alone.codes[0], batched.codes[b]), f"item {b}"
        assert torch.equal(uncached.codes[b], batched.codes[b]), f"item {b}"


def test_inference_wrapper(oracle):
    inp, exp, model = oracle["inputs"], oracle["expected"], oracle["model"]
    codes = model.inference(inp["x1"], inp["x1_lens"], inp["y1"], inp["enroll_x_lens"], top_k=1)
    assert torch.equal(codes, exp["greedy_codes"])


# ----------------------------------------------------------------- mode 4: prompts from the data

HOP = 320 / 24000
# speaker -> frames of each of its utterances; "c" has a single utterance
SPEAKERS = {"a": (30, 12, 25, 40), "b": (20, 33, 18), "c": (16,)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[CutSet, dict]:
    """Cuts whose codes name their source: codes[t, q] = 64 * k + t for the k-th cut."""
    out = tmp_path_factory.mktemp("prompts")
    cuts, index = [], {}
    with NumpyFilesWriter(str(out / "codes")) as writer:
        for speaker, lengths in SPEAKERS.items():
            for i, frames in enumerate(lengths):
                k = len(cuts)
                cut_id = f"{speaker}_{i:02d}"
                codes = (64 * k + np.arange(frames))[:, None].repeat(8, 1).astype(np.int16)
                cut = MonoCut(id=cut_id, start=0.0, duration=frames * HOP, channel=0,
                              supervisions=[SupervisionSegment(cut_id, cut_id, 0.0, frames * HOP,
                                                               speaker=speaker)])  # fmt: skip
                cut.custom = {"phones": ["a", "b"]}
                cut.codes = writer.store_array(cut_id, codes, frame_shift=HOP, temporal_dim=0)
                cuts.append(cut)
                index[k] = (cut_id, speaker, i)
    (out / "symbols.dict").write_text("<eps> 0\na 1\nb 2\n", encoding="utf-8")
    tokenizer = TextTokenizer.from_file(out / "symbols.dict")
    return CutSet.from_cuts(cuts), {"index": index, "tokenizer": tokenizer}


def source_of(chunk: torch.Tensor, index: dict) -> tuple[str, str, int, int]:
    """(cut id, speaker, position within the speaker, start frame) a prompt chunk came from."""
    first = int(chunk[0, 0])
    assert torch.equal(chunk, (first + torch.arange(len(chunk)))[:, None].expand(-1, 8))
    return (*index[first // 64], first % 64)


def test_prompt_is_a_chunk_of_a_neighbouring_utterance_of_the_same_speaker(corpus, caplog):
    cuts, info = corpus
    with caplog.at_level(logging.WARNING):
        prompts = SpeakerPrompts(cuts, max_frames=225, seed=3)
    assert "1 of 8 cuts are their speaker's only utterance" in caplog.text and "c_00" in caplog.text
    dataset = VALLEDataset(info["tokenizer"], 8, prompts)
    batch = dataset[cuts]
    chunks = batch["nar_prompts"]
    # one length for the batch: min(3 s, the shortest source chosen)
    assert chunks.shape[0] == len(cuts) and chunks.shape[2] == 8
    shortest = []
    for cut, chunk in zip(cuts, chunks, strict=True):
        speaker, i = cut.supervisions[0].speaker, int(cut.id[2:])
        src_id, src_speaker, j, start = source_of(chunk, info["index"])
        assert src_speaker == speaker
        if len(SPEAKERS[speaker]) == 1:
            assert src_id == cut.id  # the documented fallback: a chunk of itself
        else:
            assert abs(i - j) == 1  # the previous or the next utterance, never itself
        assert start + len(chunk) <= SPEAKERS[speaker][j]
        shortest.append(SPEAKERS[speaker][j])
    assert chunks.shape[1] == min(shortest)


def test_prompt_length_is_capped_by_the_config_value(corpus):
    cuts, info = corpus
    dataset = VALLEDataset(info["tokenizer"], 8, SpeakerPrompts(cuts, max_frames=5, seed=3))
    chunks = dataset[cuts]["nar_prompts"]
    starts = [source_of(c, info["index"])[3] for c in chunks]
    assert chunks.shape[1] == 5 and len(set(starts)) > 1  # random offsets
    cfg = Config()
    cfg.model.prefix_mode, cfg.train.nar_prompt_seconds = 4, 3.0
    loader, _ = make_dataloader(cuts, cfg, info["tokenizer"], shuffle=False)
    assert loader.dataset.prompts.max_frames == 225  # 3 s of 75 Hz frames
    cfg.model.prefix_mode = 2
    loader, _ = make_dataloader(cuts, cfg, info["tokenizer"], shuffle=False)
    assert loader.dataset.prompts is None and "nar_prompts" not in loader.dataset[cuts]


def test_prompt_draws_depend_on_seed_epoch_and_cut_only(corpus):
    cuts, info = corpus

    def draw(seed: int, epoch: int, subset: list[str]) -> dict[str, tuple]:
        dataset = VALLEDataset(info["tokenizer"], 8, SpeakerPrompts(cuts, 225, seed))
        dataset.set_epoch(epoch)
        batch = dataset[cuts.subset(cut_ids=subset)]
        return {
            cut_id: source_of(chunk, info["index"])
            for cut_id, chunk in zip(batch["cut_ids"], batch["nar_prompts"], strict=True)
        }

    ids = sorted(cuts.ids)
    first = draw(1, 0, ids)
    assert draw(1, 0, ids) == first  # a fresh process (resume, another worker): same prompts
    assert draw(1, 1, ids) != first and draw(2, 0, ids) != first
    # the source of a cut does not depend on the rest of the batch
    other_batch = draw(1, 0, ["a_01", "b_02"])
    assert {k: v[0] for k, v in other_batch.items()} == {k: first[k][0] for k in other_batch}
    sources = {draw(1, e, ["a_01"])["a_01"][0] for e in range(8)}
    assert sources == {"a_00", "a_02"}  # both neighbours get used


def test_mode4_training_step_takes_the_prompt_from_the_batch(corpus):
    cuts, info = corpus
    torch.manual_seed(0)
    model = VALLE(ModelConfig(decoder_dim=16, nhead=2, num_decoder_layers=1, text_token_num=8,
                              prefix_mode=4, dropout=0.0))  # fmt: skip
    batch = VALLEDataset(info["tokenizer"], 8, SpeakerPrompts(cuts, 6, seed=0))[cuts]
    logits: list = []
    handle = capture(model.nar_predict_layers[0], logits)
    loss, _ = model(batch["x"], batch["x_lens"], batch["y"], batch["y_lens"], 2, nar_stage=1,
                    nar_prompt_codes=batch["nar_prompts"])  # fmt: skip
    handle.remove()
    loss.backward()
    assert torch.isfinite(loss) and logits[0].shape[1] == batch["y"].shape[1]
    # another prompt, another loss: the batch's prompt is what the NAR sees
    with torch.no_grad():
        other, _ = model(batch["x"], batch["x_lens"], batch["y"], batch["y_lens"], 2,
                         nar_stage=1, nar_prompt_codes=batch["nar_prompts"].flip(0))  # fmt: skip
    assert not torch.isclose(loss.detach(), other)


# ----------------------------------------------------------------- stage 3: a release's prefix mode


@pytest.mark.parametrize("prefix_mode", [1, 4, None])
def test_stage3_logs_the_prefix_mode_of_a_release(tmp_path, caplog, prefix_mode):
    release = make_release(tmp_path / "release", "bin")
    args = read_json5(release / "args.json")
    args["model"].pop("prefix_mode")
    if prefix_mode is not None:
        args["model"]["prefix_mode"] = prefix_mode
    (release / "args.json").write_text(json.dumps(args))
    with caplog.at_level(logging.INFO, logger="models.tts.valle.inference"):
        source = find_model_source(release, "latest", load_config(REPO_ROOT / "config/valle.json"))
    said = "unknown (not in args.json" if prefix_mode is None else f"prefix_mode {prefix_mode}"
    assert said in caplog.text
    assert source.cfg.model.prefix_mode == (prefix_mode or 0)
