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
recipe_options  # --config --name --stage --stop_stage --gpu --resume*
opt num_workers "" "stage 1: worker processes per device [preprocess.num_workers]"
node_options  # --nproc_per_node --num_nodes --node_rank --master_addr --master_port
opt infer_expt_dir "" "stage 3: experiment, checkpoint, released Parler-TTS folder or hub id"
opt infer_mode "" "stage 3: single or batch"
opt infer_test_list_file "" "stage 3 batch: list of description|text[|name] lines"
opt_alias test_list_file infer_test_list_file
opt infer_description "" "stage 3 single: how the voice should sound"
opt infer_text "" "stage 3 single: the text to synthesise"
opt infer_do_sample "" "stage 3: true = sample, false = greedy [inference.do_sample]"
opt infer_top_k "" "stage 3: top-k sampling, 0 = off [inference.top_k]"
opt infer_max_new_tokens "" "stage 3: length cap in decoder steps [inference.max_new_tokens]"
stage3_options  # --infer_output_dir --infer_checkpoint ... --infer_num_workers --infer_avg
parse_options "$@"

recipe_checks 4  # --stage .. --stop_stage in 1..4, --config, --resume*, --overwrite, --name
needs 3 infer_expt_dir infer_mode
if stage_selected 3; then
  one_of infer_mode single batch
  case "$infer_mode" in
    single) needs 3 infer_description infer_text ;;
    batch) needs 3 infer_test_list_file ;;
  esac
fi
[ "$stage" -le 3 ] || needs 4 eval_input_dir

recipe_env  # venv, utils/launch.sh; node options checked; torchrun / srun: only stage 2
# Paths relative to the caller's directory stay so after the cd below (a hub id stays an id).
absolute_paths resume_from_ckpt_path infer_output_dir infer_test_list_file eval_input_dir \
  eval_output_dir
case "$infer_expt_dir" in ""|/*) ;; *) [ ! -e "$infer_expt_dir" ] || infer_expt_dir=$PWD/$infer_expt_dir ;; esac
cd "$work_dir"
use_gpus "$gpu"
start_time=$(date +%s)
log "config: $config"

if stage_selected 1; then
  log "Stage 1: manifests, descriptions, token ids and DAC codes"
  mapfile -d '' extra < <(opt_args --num_workers "$num_workers")
  python bins/tts/parler_preprocess.py --config "$config" ${extra[@]+"${extra[@]}"}
fi

if stage_selected 2; then
  log "Stage 2: training (experiment '$name')"
  mapfile -d '' extra < <(train_args)  # --config --exp_name --resume*
  launch_python "$nproc_per_node" "$num_nodes" "$node_rank" "$master_addr" "$master_port" \
    bins/tts/parler_train.py ${extra[@]+"${extra[@]}"}
fi

if stage_selected 3; then
  log "Stage 3: $infer_mode inference from $infer_expt_dir"
  mapfile -d '' extra < <(stage3_args; opt_args --test_list_file "$infer_test_list_file" \
    --description "$infer_description" --text "$infer_text" --do_sample "$infer_do_sample" \
    --top_k "$infer_top_k" --max_new_tokens "$infer_max_new_tokens")
  run_inference bins/tts/parler_inference.py --config "$config" --expt_dir "$infer_expt_dir" \
    --mode "$infer_mode" --overwrite "$overwrite" ${extra[@]+"${extra[@]}"}
  log "Stage 3 wrote $infer_run_dir"
  [ -n "$eval_input_dir" ] || eval_input_dir=$infer_run_dir
fi

if stage_selected 4; then
  log "Stage 4: evaluation of $eval_input_dir"
  mapfile -d '' extra < <(opt_args --output_dir "$eval_output_dir")
  python bins/tts/evaluate.py --config "$config" --recipe parler --input_dir "$eval_input_dir" \
    ${extra[@]+"${extra[@]}"}
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
