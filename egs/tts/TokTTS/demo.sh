#!/usr/bin/env bash
# `make demo`, TokTTS part: the whole TokTTS recipe on the espeak-ng mini corpus in LJSpeech
# layout with a tiny model, on CPU: corpus -> stage 1 -> stage 2 -> stage 3 (one text, then the
# test list) -> stage 4. The codec is random-init (no weights can be downloaded here), so the
# audio is meaningless noise: the demo proves the recipe runs, not that the voice is good.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$root"
. ./env.sh
run="bash egs/tts/TokTTS/run.sh --config egs/tts/TokTTS/exp_config_demo.json"
exp=exp/demo_toktts/demo
start=$(date +%s)
timed() {  # timed "what" command...: run it, log its seconds (the README quotes them)
  local t0=$SECONDS
  echo "$(date '+%F %T') (TokTTS demo.sh) ==> $1"
  shift
  "$@"
  echo "$(date '+%F %T') (TokTTS demo.sh) $((SECONDS - t0)) s"
}

[ -f corpus/mini/LibriTTS/SPEAKERS.txt ] ||
  timed "mini corpus (espeak-ng)" python egs/tts/VALLE/local/make_mini_corpus.py --out_dir corpus/mini
timed "LJSpeech layout" python egs/tts/TokTTS/local/make_ljspeech_layout.py \
  --libritts_dir corpus/mini/LibriTTS --out_dir corpus/mini_lj
timed "stage 1: first-second tokens, 2 copies per train utterance" $run --stage 1
timed "stage 2: training" $run --stage 2 --name demo
text=$(grep -v '^#' corpus/mini_lj/test_list.txt | head -n 1 | cut -d'|' -f1)
timed "stage 3: one text" $run --stage 3 --infer_expt_dir $exp --infer_text "$text" --overwrite true
timed "stage 3 + 4: the test list, then its evaluation" $run --stage 3 --stop_stage 4 \
  --infer_expt_dir $exp --infer_test_list_file corpus/mini_lj/test_list.txt --overwrite true
python -c "from models.tts.toktts import text_to_speech_pipeline as p; \
out = p('$exp', 'cpu')('$text', top_k=1); print('pipeline API:', out['audio'].shape, out['sampling_rate'])"
echo "WARNING: the demo codec is RANDOM-INIT: the audio and the stage-4 numbers are noise."
echo "TokTTS demo: Successfully finished [elapsed=$(( $(date +%s) - start ))s]"
