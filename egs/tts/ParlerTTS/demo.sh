#!/usr/bin/env bash
# `make demo` (after the VALL-E demo): the Parler-TTS recipe end to end on CPU, on the espeak-ng
# mini corpus (descriptions written by stage 1's annotation step) with a tiny RANDOM-INIT model
# folder in the released layout (local/make_tiny_random_model.py): stage 1 -> stage 2 (fine-tune
# it) -> stage 3 (single, then the batch list) -> stage 4 (evaluation of the batch outputs).
# Everything random: the audio is meaningless noise; the demo proves the pipeline runs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$root"
. ./env.sh
run="bash egs/tts/ParlerTTS/run.sh --config egs/tts/ParlerTTS/exp_config_demo.json"
exp=exp/parler_demo
start=$(date +%s)
echo "$(date '+%F %T') (parler demo) mini corpus, tiny random model folder"
python egs/tts/VALLE/local/make_mini_corpus.py --out_dir corpus/mini
[ -f $exp/tiny_random_model/model.safetensors ] \
  || python egs/tts/ParlerTTS/local/make_tiny_random_model.py $exp/tiny_random_model
$run --stage 1 --stop_stage 2 --name demo
$run --stage 3 --infer_expt_dir $exp/demo --infer_mode single --overwrite true \
  --infer_description "Jerry speaks slowly in a calm, low voice." --infer_text "Hello there."
$run --stage 3 --stop_stage 4 --infer_expt_dir $exp/demo --infer_mode batch --overwrite true \
  --infer_test_list_file egs/tts/ParlerTTS/demo_test_list.txt
echo "$(date '+%F %T') (parler demo) WARNING: the model and the DAC are RANDOM-INIT: the audio" \
  "and these numbers are noise (pipeline check only)."
cat $exp/demo/result/batch/eval/summary.md
echo "$(date '+%F %T') (parler demo) finished [elapsed=$(( $(date +%s) - start ))s]"
