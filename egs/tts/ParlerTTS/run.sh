#!/usr/bin/env bash
# Parler-TTS recipe: 1 = data (lhotse manifests, descriptions, token ids, DAC codes),
# 2 = training (fine-tune a released model), 3 = inference (description + text), 4 = evaluation.
#   sh egs/tts/ParlerTTS/run.sh --stage 1
#   sh egs/tts/ParlerTTS/run.sh --stage 2 --name EXP
#   sh egs/tts/ParlerTTS/run.sh --stage 3 --infer_expt_dir exp/parler/EXP --infer_mode single \
#        --infer_description "A calm male voice, close to the microphone." --infer_text "Hello."
#   sh egs/tts/ParlerTTS/run.sh --stage 3 --stop_stage 4 --infer_expt_dir exp/parler/EXP \
#        --infer_mode batch --infer_test_list_file list.txt    (description|text[|name] lines)
# All logic lives in bins/tts/parler_*.py and bins/tts/evaluate.py; this script declares its
# options, parses them (utils/parse_options.sh) and dispatches (utils/launch.sh).

# `sh` is dash on Debian: re-run under bash before using anything bash-only.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

exp_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work_dir=$(cd "$exp_dir/../../.." && pwd)
. "$work_dir/utils/parse_options.sh"

help_message="Usage: sh egs/tts/ParlerTTS/run.sh [options]
Runs the Parler-TTS recipe stages --stage .. --stop_stage
(1 data, 2 training, 3 inference, 4 evaluation)."
opt -c config "$exp_dir/exp_config.json" "json5 recipe config"
opt -n name "" "stage 2: experiment name, written to <log_dir>/NAME"
opt -s stage 1 "first recipe stage: 1 data, 2 training, 3 inference, 4 evaluation"
opt stop_stage "" "last recipe stage to run [same as --stage]"
opt gpu "" "visible GPU ids, e.g. 0,1 [all; the CPU when there is none]"
opt num_workers "" "stage 1: worker processes per device [preprocess.num_workers]"
opt resume false "stage 2: continue the experiment (true/false)"
opt resume_from_ckpt_path "" "stage 2: checkpoint dir to resume / fine-tune from"
opt resume_type resume "stage 2: resume (everything) or finetune (weights of an experiment)"
opt infer_expt_dir "" "stage 3: experiment, checkpoint, released Parler-TTS folder or hub id"
opt infer_output_dir "" "stage 3: output folder [<infer_expt_dir>/result]"
opt infer_mode "" "stage 3: single or batch"
opt infer_test_list_file "" "stage 3 batch: list of description|text[|name] lines"
opt_alias test_list_file infer_test_list_file
opt infer_description "" "stage 3 single: how the voice should sound"
opt infer_text "" "stage 3 single: the text to synthesise"
opt infer_checkpoint "" "stage 3: latest or best [inference.checkpoint]"
opt infer_do_sample "" "stage 3: true = sample, false = greedy [inference.do_sample]"
opt infer_top_k "" "stage 3: top-k sampling, 0 = off [inference.top_k]"
opt infer_top_p "" "stage 3: nucleus sampling [inference.top_p]"
opt infer_temperature "" "stage 3: sampling temperature [inference.temperature]"
opt infer_seed "" "stage 3: sampling seed [inference.seed]"
opt infer_batch_size "" "stage 3: lines decoded together [inference.batch_size]"
opt infer_max_new_tokens "" "stage 3: length cap in decoder steps [inference.max_new_tokens]"
opt overwrite false "stage 3: write into an existing output folder (true/false)"
opt eval_input_dir "" "stage 4: stage-3 folder with results.jsonl [with 3: the one written]"
opt eval_output_dir "" "stage 4: metrics and summary [<eval_input_dir>/eval]"
parse_options "$@"

[ -n "$stop_stage" ] || stop_stage=$stage
one_of stage 1 2 3 4
one_of stop_stage 1 2 3 4
[ "$stage" -le "$stop_stage" ] || die "--stage ($stage) is after --stop_stage ($stop_stage)"
[ -f "$config" ] || die "config file not found: $config (--config)"
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
one_of resume true false
one_of resume_type resume finetune
needs 2 name
needs 3 infer_expt_dir infer_mode
if stage_selected 3; then
  one_of infer_mode single batch
  case "$infer_mode" in
    single) needs 3 infer_description infer_text ;;
    batch) needs 3 infer_test_list_file ;;
  esac
fi
[ "$stage" -le 3 ] || needs 4 eval_input_dir

[ -f "$work_dir/.venv/bin/activate" ] || die "$work_dir/.venv is missing: run 'make install' once"
# shellcheck disable=SC1091
. "$work_dir/env.sh"
. "$work_dir/utils/launch.sh"
# Paths relative to the caller's directory stay so after the cd below (a hub id stays an id).
for path_opt in resume_from_ckpt_path infer_output_dir infer_test_list_file eval_input_dir \
    eval_output_dir; do
  case "${!path_opt}" in ""|/*) ;; *) printf -v "$path_opt" '%s' "$PWD/${!path_opt}" ;; esac
done
case "$infer_expt_dir" in ""|/*) ;; *) [ ! -e "$infer_expt_dir" ] || infer_expt_dir=$PWD/$infer_expt_dir ;; esac
cd "$work_dir"
use_gpus "$gpu"
start_time=$(date +%s)
log "config: $config"

flags() {  # flags FLAG VALUE...: "--flag value" for each non-empty value, NUL-separated
  while [ $# -gt 0 ]; do [ -z "$2" ] || printf '%s\0%s\0' "$1" "$2"; shift 2; done
}

if stage_selected 1; then
  log "Stage 1: manifests, descriptions, token ids and DAC codes"
  mapfile -d '' extra < <(flags --num_workers "$num_workers")
  python bins/tts/parler_preprocess.py --config "$config" ${extra[@]+"${extra[@]}"}
fi

if stage_selected 2; then
  log "Stage 2: training (experiment '$name')"
  mapfile -d '' extra < <(flags --resume_from_ckpt_path "$resume_from_ckpt_path")
  launch_python "$(num_visible_gpus)" bins/tts/parler_train.py --config "$config" \
    --exp_name "$name" --resume "$resume" --resume_type "$resume_type" ${extra[@]+"${extra[@]}"}
fi

if stage_selected 3; then
  log "Stage 3: $infer_mode inference from $infer_expt_dir"
  mapfile -d '' extra < <(flags --output_dir "$infer_output_dir" \
    --test_list_file "$infer_test_list_file" --description "$infer_description" \
    --text "$infer_text" --checkpoint "$infer_checkpoint" --do_sample "$infer_do_sample" \
    --top_k "$infer_top_k" --top_p "$infer_top_p" --temperature "$infer_temperature" \
    --seed "$infer_seed" --batch_size "$infer_batch_size" \
    --max_new_tokens "$infer_max_new_tokens")
  run_inference bins/tts/parler_inference.py --config "$config" --expt_dir "$infer_expt_dir" \
    --mode "$infer_mode" --overwrite "$overwrite" ${extra[@]+"${extra[@]}"}
  log "Stage 3 wrote $infer_run_dir"
  [ -n "$eval_input_dir" ] || eval_input_dir=$infer_run_dir
fi

if stage_selected 4; then
  log "Stage 4: evaluation of $eval_input_dir"
  mapfile -d '' extra < <(flags --output_dir "$eval_output_dir")
  python bins/tts/evaluate.py --config "$config" --recipe parler --input_dir "$eval_input_dir" \
    ${extra[@]+"${extra[@]}"}
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
