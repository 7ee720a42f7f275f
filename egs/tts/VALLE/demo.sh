#!/usr/bin/env bash
# `make demo`: the whole VALL-E recipe on the espeak-ng mini corpus with a tiny model, on CPU:
# corpus -> stage 1 (data) -> stage 2 (AR, then NAR) -> stage 3 (single + batch inference)
# -> stage 4 (evaluation of the batch outputs; ends with its summary table).
# The codec is random-init (no weights can be downloaded here), so the audio it writes is
# meaningless noise: the demo proves the pipeline runs, not that the voice is good.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"
config=egs/tts/VALLE/exp_config_demo.json
run="bash egs/tts/VALLE/run.sh --config $config"
log() { echo -e "$(date '+%Y-%m-%d %H:%M:%S') (demo.sh) $*"; }
start=$(date +%s)

step() {  # step "description" command...: run it, and say plainly when a part does not exist
  log "==> $1"
  shift
  set +e
  "$@"
  rc=$?
  set -e
  if [ $rc -eq 2 ]; then
    log "MISSING: '$*' is not implemented yet (see the message above); the demo stops here."
    exit 2
  elif [ $rc -ne 0 ]; then
    log "FAILED ($rc): $*"
    exit $rc
  fi
}

. ./env.sh
step "mini corpus (espeak-ng, LibriTTS layout)" \
  python egs/tts/VALLE/local/make_mini_corpus.py --out_dir corpus/mini
step "stage 1: manifests, phonemes, codec tokens" $run --stage 1
step "stage 2: AR decoder" $run --stage 2 --name demo_ar --model_train_stage 1
step "stage 2: NAR decoders (from the AR run)" $run --stage 2 --name demo_nar \
  --model_train_stage 2 --ar_model_ckpt_dir exp/demo/demo_ar
# single mode speaks the first test-list line: text|text_prompt|audio_prompt (dev voice)
IFS='|' read -r text prompt_text prompt < <(grep -v '^#' corpus/mini/test_list.txt | head -n 1)
step "stage 3: single inference" $run --stage 3 --infer_expt_dir exp/demo/demo_nar \
  --infer_mode single --infer_text "$text" --infer_text_prompt "$prompt_text" \
  --infer_audio_prompt "corpus/mini/$prompt" --overwrite true
step "stage 3 + 4: batch inference, then its evaluation" $run --stage 3 --stop_stage 4 \
  --infer_expt_dir exp/demo/demo_nar --infer_mode batch \
  --infer_test_list_file corpus/mini/test_list.txt --overwrite true

log "outputs: $(find exp/demo/demo_nar/result -name '*.wav' | wc -l) wav files under exp/demo/demo_nar/result"
log "WARNING: the demo codec is RANDOM-INIT: the audio is meaningless (pipeline check only)."
log "stage 4 summary (exp/demo/demo_nar/result/batch/eval/summary.md): the numbers of NOISE," \
  "as the codec is random-init (pocketsphinx / resemblyzer / DNSMOS: offline backends)"
cat exp/demo/demo_nar/result/batch/eval/summary.md
log "Successfully finished [elapsed=$(( $(date +%s) - start ))s]"
