"""Recipe stage 4: objective evaluation of synthesised speech (WER/CER, SIM-o/SIM-r, DNSMOS).

A library layer below `bins/`, above `models/` (SIM-r resynthesises prompts through a recipe's
codec): `bins/tts/evaluate.py` is its command line. Training-time listening is not here (training
may not import this layer) but in `models/tts/valle/listening.py`.

* `evaluation.backends`: one small module per metric backend, each with `load(model, device)`
  returning an object with `name`, `version` and one batch method (`transcribe`, `embed`,
  `score`); all take 16 kHz mono float32 numpy arrays.
* `evaluation.text`: the English normaliser and WER/CER counts (jiwer).
* `evaluation.scoring`: reads a stage-3 `results.jsonl`, scores it in batches (resumable),
  appends `metrics.jsonl`; `evaluation.summary`: `summary.json`, `summary.md`, tensorboard.
"""
