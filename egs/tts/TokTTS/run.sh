#!/usr/bin/env bash
# TokTTS recipe: 1 = data (lhotse manifests, first-seconds 2-codebook EnCodec tokens, character
# table), 2 = training, 3 = inference (one text or a text[|name] list), 4 = evaluation.
# Run from any directory, with sh or bash:
#   sh egs/tts/TokTTS/run.sh --stage 1
#   sh egs/tts/TokTTS/run.sh --stage 2 --name EXP
#   sh egs/tts/TokTTS/run.sh --stage 3 --infer_expt_dir exp/toktts/EXP --infer_text "Hello."
#   sh egs/tts/TokTTS/run.sh --stage 3 --stop_stage 4 --infer_expt_dir exp/toktts/EXP \
#        --infer_test_list_file list.txt
# All logic lives in bins/tts/toktts_*.py (and bins/tts/evaluate.py); this script declares its
# options, parses them (utils/parse_options.sh) and dispatches (utils/launch.sh).

# `sh` is dash on Debian: re-run under bash before using anything bash-only.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

exp_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work_dir=$(cd "$exp_dir/../../.." && pwd)
. "$work_dir/utils/parse_options.sh"

help_message="Usage: sh egs/tts/TokTTS/run.sh [options]
Runs the TokTTS recipe stages --stage .. --stop_stage
(1 data, 2 training, 3 inference, 4 evaluation)."
recipe_options  # --config --name --stage --stop_stage --gpu --resume*
node_options  # --nproc_per_node --num_nodes --node_rank --master_addr --master_port
opt infer_expt_dir "" "stage 3: experiment, checkpoint or exported TokTTS model folder"
opt infer_text "" "stage 3 single: the text to synthesise"
opt infer_test_list_file "" "stage 3 batch: list of text[|name] lines"
opt_alias test_list_file infer_test_list_file
opt infer_top_k "" "stage 3: top-k sampling, 1 = greedy [inference.top_k]"
opt infer_max_seconds "" "stage 3: cap on generated seconds [inference.max_seconds]"
opt infer_reference_audio "" "stage 3: voice reference for stage 4's SIM-o [first valid utterance]"
stage3_options  # --infer_output_dir --infer_checkpoint ... --infer_num_workers --infer_avg
opt eval_asr "" "stage 4: whisper, hubert or pocketsphinx [evaluation.asr]"
opt eval_mos "" "stage 4: dnsmos or none [evaluation.mos]"
parse_options "$@"

recipe_checks 4  # --stage .. --stop_stage in 1..4, --config, --resume*, --overwrite, --name
needs 3 infer_expt_dir
if stage_selected 3 && [ -z "$infer_text" ] && [ -z "$infer_test_list_file" ]; then
  die "stage 3 needs --infer_text or --infer_test_list_file"
elif stage_selected 3 && [ -n "$infer_text" ] && [ -n "$infer_test_list_file" ]; then
  die "stage 3 takes --infer_text or --infer_test_list_file, not both"
fi
[ "$stage" -le 3 ] || needs 4 eval_input_dir  # with stage 3: the folder it writes

recipe_env  # venv, utils/launch.sh; node options checked; torchrun / srun: only stage 2
absolute_paths resume_from_ckpt_path infer_expt_dir infer_output_dir infer_test_list_file \
  infer_reference_audio eval_input_dir eval_output_dir
cd "$work_dir"
use_gpus "$gpu"
start_time=$(date +%s)
log "config: $config"

if stage_selected 1; then
  log "Stage 1: manifests, first-seconds EnCodec tokens, character table"
  python bins/tts/toktts_preprocess.py --config "$config"
fi

if stage_selected 2; then
  log "Stage 2: training (experiment '$name')"
  mapfile -d '' extra < <(train_args)  # --config --exp_name --resume*
  launch_python "$nproc_per_node" "$num_nodes" "$node_rank" "$master_addr" "$master_port" \
    bins/tts/toktts_train.py ${extra[@]+"${extra[@]}"}
fi

if stage_selected 3; then
  log "Stage 3: inference from $infer_expt_dir"
  mapfile -d '' extra < <(stage3_args; opt_args --text "$infer_text" \
    --test_list_file "$infer_test_list_file" --top_k "$infer_top_k" \
    --max_seconds "$infer_max_seconds" --reference_audio "$infer_reference_audio")
  run_inference bins/tts/toktts_inference.py --config "$config" --expt_dir "$infer_expt_dir" \
    --overwrite "$overwrite" ${extra[@]+"${extra[@]}"}
  log "Stage 3 wrote $infer_run_dir"
  [ -n "$eval_input_dir" ] || eval_input_dir=$infer_run_dir
fi

if stage_selected 4; then
  log "Stage 4: evaluation of $eval_input_dir"
  mapfile -d '' extra < <(opt_args --output_dir "$eval_output_dir" --asr "$eval_asr" \
    --mos "$eval_mos")
  python bins/tts/evaluate.py --recipe toktts --config "$config" --input_dir "$eval_input_dir" \
    ${extra[@]+"${extra[@]}"}
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
