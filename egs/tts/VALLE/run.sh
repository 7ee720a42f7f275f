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
opt -c config "$exp_dir/exp_config.json" "json5 recipe config"
opt -n name "" "stage 2: experiment name, written to <log_dir>/NAME"
opt -s stage 1 "first recipe stage: 1 data, 2 training, 3 inference, 4 evaluation"
opt stop_stage "" "last recipe stage to run [same as --stage]"
opt gpu "" "visible GPU ids, e.g. 0,1 [all; the CPU when there is none]"
opt num_workers "" "stage 1: worker processes per device [preprocess.num_workers]"
opt nj 1 "stage 1: jobs (machines) it is split into; with N > 1 and no --job_index: merge"
opt job_index "" "stage 1 with --nj N: this job (0 .. N-1) encodes its shards, no merge"
opt model_train_stage "" "stage 2: 0 AR+NAR, 1 AR decoder, 2 NAR decoders [train.train_stage]"
opt ar_model_ckpt_dir "" "stage 2, NAR: AR experiment or checkpoint dir to start from"
opt resume false "stage 2: continue the experiment (true/false)"
opt resume_from_ckpt_path "" "stage 2: checkpoint dir to resume from [newest of the experiment]"
opt resume_type resume "stage 2: resume (everything) or finetune (weights only)"
opt nproc_per_node "" "stage 2: training processes on this node [one per visible GPU; CPU: 1]"
opt num_nodes 1 "stage 2: machines training together (torchrun's --nnodes)"
opt node_rank 0 "stage 2: this machine's rank, 0 .. num_nodes-1"
opt master_addr "" "stage 2: host name or IP of node 0 (needed when num_nodes > 1)"
opt master_port "" "stage 2: rendezvous TCP port on node 0 [29500 with num_nodes > 1; else free]"
opt infer_expt_dir "" "stage 3: experiment, checkpoint or released VALL-E folder"
opt infer_output_dir "" "stage 3: output folder [<infer_expt_dir>/result]"
opt infer_mode "" "stage 3: single or batch"
opt infer_test_list_file "" "stage 3 batch: list of text|text_prompt|audio_prompt lines"
opt_alias test_list_file infer_test_list_file
opt infer_text "" "stage 3 single: the text to synthesise"
opt infer_text_prompt "" "stage 3 single: transcript of the audio prompt"
opt infer_audio_prompt "" "stage 3 single: audio prompt (any rate, mono or stereo; 3 s is typical)"
opt infer_checkpoint "" "stage 3: latest or best [inference.checkpoint]"
opt infer_top_k "" "stage 3: top-k sampling, 1 = greedy [inference.top_k]"
opt infer_top_p "" "stage 3: nucleus sampling [inference.top_p]"
opt infer_temperature "" "stage 3: sampling temperature [inference.temperature]"
opt infer_seed "" "stage 3: sampling seed [inference.seed]"
opt infer_batch_size "" "stage 3: lines decoded together [inference.batch_size]"
opt infer_continual "" "stage 3: true = continue the prompt utterance [inference.continual]"
opt infer_max_seconds "" "stage 3: cap on generated seconds [inference.max_seconds]"
opt infer_trim_long_prompts "" "stage 3: true = cut over-long prompts [inference.trim_long_prompts]"
opt infer_num_workers "" "stage 3 batch: processes sharing the list [one per visible GPU, else 1]"
opt infer_avg 1 "stage 3: average the last N checkpoints, or NAME,NAME,... (folders in checkpoint/)"
opt overwrite false "stage 3: write into an existing output folder (true/false)"
opt eval_input_dir "" "stage 4: stage-3 folder with results.jsonl [with 3: the one written]"
opt eval_output_dir "" "stage 4: metrics and summary [<eval_input_dir>/eval]"
opt eval_asr "" "stage 4: whisper, hubert or pocketsphinx [evaluation.asr]"
opt eval_asr_model "" "stage 4: ASR model hub id or local folder [evaluation.asr_model]"
opt eval_sim "" "stage 4: wavlm or resemblyzer [evaluation.sim]"
opt eval_sim_model "" "stage 4: speaker model hub id or local folder [evaluation.sim_model]"
opt eval_mos "" "stage 4: dnsmos or none [evaluation.mos]"
parse_options "$@"

# ---- checks: bad values and missing per-stage options fail before any stage runs ------------
check_stages 4  # --stage .. --stop_stage in 1..4; --config exists (made absolute)
one_of resume true false
one_of resume_type resume finetune
needs 2 name
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
[ -f "$work_dir/.venv/bin/activate" ] || die "$work_dir/.venv is missing: run 'make install' once"
# shellcheck disable=SC1091
. "$work_dir/env.sh"
. "$work_dir/utils/launch.sh"
check_nodes "$nproc_per_node" "$num_nodes" "$node_rank" "$master_addr" "$master_port"
read -r world world_rank launcher < <(launched_world)  # torchrun / srun started this script?
[ "$launcher" = none ] || { [ "$stage" -eq 2 ] && [ "$stop_stage" -eq 2 ]; } ||
  die "$launcher started this script as rank $world_rank of $world: run only --stage 2" \
    "--stop_stage 2 that way (one copy per process); the other stages run once, outside it"
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
  mapfile -d '' extra < <(opt_args --model_train_stage "$model_train_stage" \
    --ar_model_ckpt_dir "$ar_model_ckpt_dir" --resume_from_ckpt_path "$resume_from_ckpt_path")
  launch_python "$nproc_per_node" "$num_nodes" "$node_rank" "$master_addr" "$master_port" \
    bins/tts/train.py --config "$config" --exp_name "$name" \
    --resume "$resume" --resume_type "$resume_type" ${extra[@]+"${extra[@]}"}
fi

if stage_selected 3; then
  log "Stage 3: $infer_mode inference from $infer_expt_dir"
  mapfile -d '' extra < <(opt_args --output_dir "$infer_output_dir" \
    --test_list_file "$infer_test_list_file" --text "$infer_text" \
    --text_prompt "$infer_text_prompt" --audio_prompt "$infer_audio_prompt" \
    --checkpoint "$infer_checkpoint" --top_k "$infer_top_k" --top_p "$infer_top_p" \
    --temperature "$infer_temperature" --seed "$infer_seed" --batch_size "$infer_batch_size" \
    --continual "$infer_continual" --max_seconds "$infer_max_seconds" \
    --trim_long_prompts "$infer_trim_long_prompts" --num_workers "$infer_num_workers" \
    --avg "$infer_avg")
  run_dir_file=$(mktemp)
  trap 'rm -f "$run_dir_file"' EXIT
  python bins/tts/inference.py --config "$config" --expt_dir "$infer_expt_dir" \
    --mode "$infer_mode" --overwrite "$overwrite" --run_dir_file "$run_dir_file" \
    ${extra[@]+"${extra[@]}"}
  infer_run_dir=$(cat "$run_dir_file"); rm -f "$run_dir_file"
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
