#!/usr/bin/env bash
# VALL-E recipe: 1 = data (lhotse manifests, phonemes, EnCodec tokens), 2 = training (AR / NAR),
# 3 = zero-shot inference, 4 = evaluation. Run from any directory, with sh or bash:
#   sh egs/tts/VALLE/run.sh --stage 1
#   sh egs/tts/VALLE/run.sh --stage 2 --name EXP --model_train_stage 1
#   sh egs/tts/VALLE/run.sh --stage 3 --infer_expt_dir exp/valle/EXP --infer_mode batch \
#        --infer_test_list_file list.txt
#   sh egs/tts/VALLE/run.sh --stage 4 --eval_input_dir exp/valle/EXP/result/batch
# All logic lives in bins/tts/*.py; this script declares its options, parses them
# (utils/parse_options.sh) and dispatches (utils/launch.sh: one process, or one per GPU).

# `sh` is dash on Debian: re-run under bash before using anything bash-only.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

exp_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work_dir=$(cd "$exp_dir/../../.." && pwd)
. "$work_dir/utils/parse_options.sh"

# ---- options: each declared once (name, default, help); --help lists them ------------------
help_message="Usage: sh egs/tts/VALLE/run.sh [options]
Runs the VALL-E recipe stages --stage .. --stop_stage
(1 data, 2 training, 3 inference, 4 evaluation)."
recipe_options  # --config --name --stage --stop_stage --gpu --resume*
opt num_workers "" "stage 1: worker processes per device [preprocess.num_workers]"
opt nj 1 "stage 1: jobs (machines) it is split into; with N > 1 and no --job_index: merge"
opt job_index "" "stage 1 with --nj N: this job (0 .. N-1) encodes its shards, no merge"
opt model_train_stage "" "stage 2: 0 AR+NAR, 1 AR decoder, 2 NAR decoders [train.train_stage]"
opt ar_model_ckpt_dir "" "stage 2, NAR: AR experiment or checkpoint dir to start from"
node_options  # --nproc_per_node --num_nodes --node_rank --master_addr --master_port
opt infer_expt_dir "" "stage 3: experiment, checkpoint or released VALL-E folder"
opt infer_mode "" "stage 3: single or batch"
opt infer_test_list_file "" "stage 3 batch: list of text|text_prompt|audio_prompt lines"
opt_alias test_list_file infer_test_list_file
opt infer_text "" "stage 3 single: the text to synthesise"
opt infer_text_prompt "" "stage 3 single: transcript of the audio prompt"
opt infer_audio_prompt "" "stage 3 single: audio prompt (any rate, mono or stereo; 3 s is typical)"
opt infer_top_k "" "stage 3: top-k sampling, 1 = greedy [inference.top_k]"
opt infer_continual "" "stage 3: true = continue the prompt utterance [inference.continual]"
opt infer_max_seconds "" "stage 3: cap on generated seconds [inference.max_seconds]"
opt infer_trim_long_prompts "" "stage 3: true = cut over-long prompts [inference.trim_long_prompts]"
stage3_options  # --infer_output_dir --infer_checkpoint ... --infer_num_workers --infer_avg
opt eval_asr "" "stage 4: whisper, hubert or pocketsphinx [evaluation.asr]"
opt eval_asr_model "" "stage 4: ASR model hub id or local folder [evaluation.asr_model]"
opt eval_sim "" "stage 4: wavlm or resemblyzer [evaluation.sim]"
opt eval_sim_model "" "stage 4: speaker model hub id or local folder [evaluation.sim_model]"
opt eval_mos "" "stage 4: dnsmos or none [evaluation.mos]"
parse_options "$@"

# ---- checks: bad values and missing per-stage options fail before any stage runs ------------
recipe_checks 4  # --stage .. --stop_stage in 1..4, --config, --resume*, --overwrite, --name
needs 3 infer_expt_dir infer_mode
if stage_selected 3; then
  one_of infer_mode single batch
  case "$infer_mode" in
    single) if [ "$infer_continual" = true ]; then needs 3 infer_text_prompt infer_audio_prompt
            else needs 3 infer_text infer_text_prompt infer_audio_prompt; fi ;;
    batch) needs 3 infer_test_list_file ;;
  esac
fi
[ "$stage" -le 3 ] || needs 4 eval_input_dir  # with stage 3: the folder it writes

# ---- environment -----------------------------------------------------------------------------
recipe_env  # venv, utils/launch.sh; node options checked; torchrun / srun: only stage 2
# Paths given relative to the caller's directory stay so after the cd below.
absolute_paths ar_model_ckpt_dir resume_from_ckpt_path infer_expt_dir infer_output_dir \
  infer_test_list_file infer_audio_prompt eval_input_dir eval_output_dir
for path_opt in eval_asr_model eval_sim_model; do  # an existing local folder, else a hub id
  case "${!path_opt}" in
    ""|/*) ;;
    *) [ ! -e "${!path_opt}" ] || printf -v "$path_opt" '%s' "$PWD/${!path_opt}" ;;
  esac
done
cd "$work_dir"
use_gpus "$gpu"  # the only place --gpu is read: the stages use the visible devices
start_time=$(date +%s)
log "config: $config"

if stage_selected 1; then
  log "Stage 1: manifests, phonemes and codec tokens"
  mapfile -d '' extra < <(opt_args --num_workers "$num_workers" --job_index "$job_index")
  python bins/tts/preprocess.py --config "$config" --nj "$nj" ${extra[@]+"${extra[@]}"}
fi

if stage_selected 2; then
  log "Stage 2: training (experiment '$name', model train stage ${model_train_stage:-from config})"
  mapfile -d '' extra < <(train_args; opt_args --model_train_stage "$model_train_stage" \
    --ar_model_ckpt_dir "$ar_model_ckpt_dir")
  launch_python "$nproc_per_node" "$num_nodes" "$node_rank" "$master_addr" "$master_port" \
    bins/tts/train.py ${extra[@]+"${extra[@]}"}
fi

if stage_selected 3; then
  log "Stage 3: $infer_mode inference from $infer_expt_dir"
  mapfile -d '' extra < <(stage3_args; opt_args --test_list_file "$infer_test_list_file" \
    --text "$infer_text" --text_prompt "$infer_text_prompt" \
    --audio_prompt "$infer_audio_prompt" --top_k "$infer_top_k" \
    --continual "$infer_continual" --max_seconds "$infer_max_seconds" \
    --trim_long_prompts "$infer_trim_long_prompts")
  run_inference bins/tts/inference.py --config "$config" --expt_dir "$infer_expt_dir" \
    --mode "$infer_mode" --overwrite "$overwrite" ${extra[@]+"${extra[@]}"}
  log "Stage 3 wrote $infer_run_dir"
  [ -n "$eval_input_dir" ] || eval_input_dir=$infer_run_dir
fi

if stage_selected 4; then
  log "Stage 4: evaluation of $eval_input_dir"
  mapfile -d '' extra < <(opt_args --output_dir "$eval_output_dir" --asr "$eval_asr" \
    --asr_model "$eval_asr_model" --sim "$eval_sim" --sim_model "$eval_sim_model" \
    --mos "$eval_mos")
  python bins/tts/evaluate.py --config "$config" --input_dir "$eval_input_dir" \
    ${extra[@]+"${extra[@]}"}
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
