#!/usr/bin/env bash
# VALL-E recipe: 1 = data (lhotse manifests, phonemes, EnCodec tokens), 2 = training (AR / NAR),
# 3 = zero-shot inference, 4 = evaluation. Run from any directory, with sh or bash:
#   sh egs/tts/VALLE/run.sh --stage 1
#   sh egs/tts/VALLE/run.sh --stage 2 --name EXP --model_train_stage 1
#   sh egs/tts/VALLE/run.sh --stage 3 --infer_expt_dir exp/valle/EXP --infer_mode batch \
#        --infer_test_list_file list.txt
#   sh egs/tts/VALLE/run.sh --stage 4 --eval_input_dir exp/valle/EXP/result/batch
# All logic lives in bins/tts/*.py; this script parses options and dispatches.

# `sh` is dash on Debian: re-run under bash before using anything bash-only.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

exp_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work_dir=$(cd "$exp_dir/../../.." && pwd)

# ---- options: name=default ; help text ------------------------------------------------------
config=$exp_dir/exp_config.json    # json5 config of the recipe
name=""                            # experiment name (stage 2): output in <log_dir>/<name>
stage=1                            # first recipe stage (1 data, 2 train, 3 inference, 4 eval)
stop_stage=""                      # last recipe stage to run (default: same as --stage)
gpu=""                             # visible GPUs, e.g. 0,1 (default: all; CPU when none)
model_train_stage=""               # 0 AR+NAR, 1 AR, 2 NAR (default: train.train_stage)
ar_model_ckpt_dir=""               # stage 2 NAR: AR experiment or checkpoint dir to start from
resume=false                       # stage 2: continue an experiment (true/false)
resume_from_ckpt_path=""           # stage 2: checkpoint dir to resume from (default: newest)
resume_type=resume                 # stage 2: resume (everything) or finetune (weights only)
infer_expt_dir=""                  # stage 3: experiment, checkpoint or released-model dir
infer_output_dir=""                # stage 3: output dir (default: <infer_expt_dir>/result)
infer_mode=""                      # stage 3: single or batch
infer_test_list_file=""            # stage 3 batch: test list (text|text_prompt|audio_prompt)
infer_text=""                      # stage 3 single: text to speak
infer_text_prompt=""               # stage 3 single: transcript of the audio prompt
infer_audio_prompt=""              # stage 3 single: audio prompt file (any rate, mono/stereo)
infer_checkpoint=""                # stage 3: latest or best (default: inference.checkpoint)
infer_top_k=""                     # stage 3: override inference.top_k
infer_top_p=""                     # stage 3: override inference.top_p
infer_temperature=""               # stage 3: override inference.temperature
infer_seed=""                      # stage 3: override inference.seed
infer_batch_size=""                # stage 3: override inference.batch_size
infer_continual=""                 # stage 3: true = continue the prompt utterance
infer_max_seconds=""               # stage 3: override inference.max_seconds (length cap)
overwrite=false                    # stage 3: write into an existing output dir
num_workers=""                     # stage 1: override preprocess.num_workers
eval_input_dir=""                  # stage 4: stage-3 folder with results.jsonl (3->4: that run)
eval_output_dir=""                 # stage 4: output dir (default: <eval_input_dir>/eval)
eval_asr=""                        # stage 4: whisper, hubert or pocketsphinx (evaluation.asr)
eval_asr_model=""                  # stage 4: ASR hub id or local folder (evaluation.asr_model)
eval_sim=""                        # stage 4: wavlm or resemblyzer (evaluation.sim)
eval_sim_model=""                  # stage 4: speaker model id or folder (evaluation.sim_model)
eval_mos=""                        # stage 4: dnsmos or none (evaluation.mos)

usage() {
  cat <<EOF
Usage: sh egs/tts/VALLE/run.sh [options]
Runs the VALL-E recipe stages --stage .. --stop_stage. Options (default in brackets):
  -c, --config FILE             json5 recipe config [$exp_dir/exp_config.json]
  -n, --name NAME               experiment name, stage 2: written to <log_dir>/NAME
  -s, --stage N                 first stage: 1 data, 2 training, 3 inference, 4 evaluation [1]
      --stop_stage N            last stage to run [same as --stage]
      --gpu LIST                visible GPU ids, e.g. 0,1 [all; CPU when there is none]
      --model_train_stage N     0 AR+NAR, 1 AR decoder, 2 NAR decoders [train.train_stage]
      --ar_model_ckpt_dir DIR   stage 2 NAR: AR experiment/checkpoint to start from
      --resume true|false       stage 2: continue the experiment [false]
      --resume_from_ckpt_path D stage 2: checkpoint to resume from [newest of the experiment]
      --resume_type TYPE        resume (weights+optimizer+sampler+RNG) or finetune [resume]
      --infer_expt_dir DIR      stage 3: experiment, checkpoint or released VALL-E folder
      --infer_output_dir DIR    stage 3: outputs [<infer_expt_dir>/result]
      --infer_mode MODE         stage 3: single or batch
      --infer_test_list_file F  stage 3 batch: list file (alias: --test_list_file)
      --infer_text TEXT         stage 3 single: the text to synthesise
      --infer_text_prompt TEXT  stage 3 single: transcript of the audio prompt
      --infer_audio_prompt WAV  stage 3 single: the audio prompt (3 s is typical)
      --infer_checkpoint WHICH  stage 3: latest or best [inference.checkpoint]
      --infer_top_k K           stage 3: top-k sampling (1 = greedy) [inference.top_k]
      --infer_top_p P           stage 3: nucleus sampling [inference.top_p]
      --infer_temperature T     stage 3: temperature [inference.temperature]
      --infer_seed S            stage 3: sampling seed [inference.seed]
      --infer_batch_size B      stage 3: lines decoded together [inference.batch_size]
      --infer_continual BOOL    stage 3: continue the prompt utterance [inference.continual]
      --infer_max_seconds S     stage 3: cap on generated seconds [inference.max_seconds]
      --overwrite true|false    stage 3: reuse an existing output folder [false]
      --num_workers N           stage 1: worker processes [preprocess.num_workers]
      --eval_input_dir DIR      stage 4: stage-3 folder (results.jsonl) [with 3: the one written]
      --eval_output_dir DIR     stage 4: metrics + summary [<eval_input_dir>/eval]
      --eval_asr NAME           stage 4: whisper, hubert or pocketsphinx [evaluation.asr]
      --eval_asr_model ID|DIR   stage 4: ASR model hub id or local folder [evaluation.asr_model]
      --eval_sim NAME           stage 4: wavlm or resemblyzer [evaluation.sim]
      --eval_sim_model ID|DIR   stage 4: speaker model hub id or folder [evaluation.sim_model]
      --eval_mos NAME           stage 4: dnsmos or none [evaluation.mos]
  -h, --help                    print this help
EOF
}

log() {
  # log "message": timestamped, with the calling file and line, like icefall's prepare.sh.
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') ($fname:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

die() { log "ERROR: $*" >&2; exit 1; }

declare -A short=([-c]=config [-n]=name [-s]=stage [-h]=help)
declare -A alias=([test_list_file]=infer_test_list_file)
known=" config name stage stop_stage gpu model_train_stage ar_model_ckpt_dir resume
  resume_from_ckpt_path resume_type infer_expt_dir infer_output_dir infer_mode
  infer_test_list_file infer_text infer_text_prompt infer_audio_prompt infer_checkpoint
  infer_top_k infer_top_p infer_temperature infer_seed infer_batch_size infer_continual
  infer_max_seconds overwrite num_workers eval_input_dir eval_output_dir eval_asr
  eval_asr_model eval_sim eval_sim_model eval_mos "
known=$(echo $known)
while [ $# -gt 0 ]; do
  arg=$1
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --*=*) opt=${arg%%=*}; opt=${opt#--}; value=${arg#*=}; shift ;;
    --*) opt=${arg#--}; [ $# -ge 2 ] || die "option --$opt needs a value (see --help)"
         value=$2; shift 2 ;;
    -?) opt=${short[$arg]:-}; [ -n "$opt" ] || die "unknown option '$arg' (see --help)"
        [ $# -ge 2 ] || die "option $arg needs a value (see --help)"
        value=$2; shift 2 ;;
    *) die "unexpected argument '$arg': options are --name value pairs (see --help)" ;;
  esac
  opt=${alias[$opt]:-$opt}
  case " $known " in
    *" $opt "*) printf -v "$opt" '%s' "$value" ;;
    *) die "unknown option '--$opt' (see --help for the list)" ;;
  esac
done

[ -n "$stop_stage" ] || stop_stage=$stage
for n in stage stop_stage; do
  [[ ${!n} =~ ^[1-4]$ ]] || die "--$n must be 1, 2, 3 or 4 (got '${!n}')"
done
[ "$stage" -le "$stop_stage" ] || die "--stage ($stage) is after --stop_stage ($stop_stage)"
[ -f "$config" ] || die "config file not found: $config (--config)"
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
case "$resume" in true|false) ;; *) die "--resume must be true or false (got '$resume')" ;; esac
case "$resume_type" in resume|finetune) ;; *) die "--resume_type must be resume or finetune" ;; esac

needs() {  # needs STAGE OPTION...: fail before running anything when an option is missing
  local s=$1; shift
  [ "$stage" -le "$s" ] && [ "$stop_stage" -ge "$s" ] || return 0
  for opt in "$@"; do
    [ -n "${!opt}" ] || die "stage $s needs --$opt (see --help)"
  done
}
needs 2 name
needs 3 infer_expt_dir infer_mode
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  case "$infer_mode" in
    single) if [ "$infer_continual" = true ]; then needs 3 infer_text_prompt infer_audio_prompt
            else needs 3 infer_text infer_text_prompt infer_audio_prompt; fi ;;
    batch) needs 3 infer_test_list_file ;;
    *) die "--infer_mode must be single or batch (got '$infer_mode')" ;;
  esac
fi
[ "$stage" -le 3 ] || needs 4 eval_input_dir  # with stage 3: the folder it writes

# ---- environment -----------------------------------------------------------------------------
[ -f "$work_dir/.venv/bin/activate" ] || die "$work_dir/.venv is missing: run 'make install' once"
# shellcheck disable=SC1091
. "$work_dir/env.sh"
# Paths given relative to the caller's directory stay so after the cd below.
for opt in ar_model_ckpt_dir resume_from_ckpt_path infer_expt_dir infer_output_dir \
    infer_test_list_file infer_audio_prompt eval_input_dir eval_output_dir; do
  case "${!opt}" in ""|/*) ;; *) printf -v "$opt" '%s' "$PWD/${!opt}" ;; esac
done
for opt in eval_asr_model eval_sim_model; do  # an existing local folder; else a hub id as given
  case "${!opt}" in ""|/*) ;; *) [ ! -e "${!opt}" ] || printf -v "$opt" '%s' "$PWD/${!opt}" ;; esac
done
cd "$work_dir"
[ -z "$gpu" ] || export CUDA_VISIBLE_DEVICES=$gpu
start_time=$(date +%s)
log "config: $config"

opt_args() {  # opt_args FLAG VALUE...: "--flag value" for each non-empty value
  while [ $# -gt 0 ]; do
    [ -z "$2" ] || printf '%s\0%s\0' "$1" "$2"
    shift 2
  done
}

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: manifests, phonemes and codec tokens"
  mapfile -d '' extra < <(opt_args --gpu "$gpu" --num_workers "$num_workers")
  python bins/tts/preprocess.py --config "$config" ${extra[@]+"${extra[@]}"}
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "Stage 2: training (experiment '$name')"
  mapfile -d '' extra < <(opt_args --gpu "$gpu" --train_stage "$model_train_stage" \
    --ar_model_ckpt_dir "$ar_model_ckpt_dir" --resume_from_ckpt_path "$resume_from_ckpt_path")
  python bins/tts/train.py --config "$config" --exp_name "$name" --resume "$resume" \
    --resume_type "$resume_type" ${extra[@]+"${extra[@]}"}
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "Stage 3: $infer_mode inference from $infer_expt_dir"
  mapfile -d '' extra < <(opt_args --output_dir "$infer_output_dir" \
    --test_list_file "$infer_test_list_file" --text "$infer_text" \
    --text_prompt "$infer_text_prompt" --audio_prompt "$infer_audio_prompt" \
    --checkpoint "$infer_checkpoint" --top_k "$infer_top_k" --top_p "$infer_top_p" \
    --temperature "$infer_temperature" --seed "$infer_seed" --batch_size "$infer_batch_size" \
    --continual "$infer_continual" --max_seconds "$infer_max_seconds")
  run_dir_file=$(mktemp)
  trap 'rm -f "$run_dir_file"' EXIT
  python bins/tts/inference.py --config "$config" --expt_dir "$infer_expt_dir" \
    --mode "$infer_mode" --overwrite "$overwrite" --run_dir_file "$run_dir_file" \
    ${extra[@]+"${extra[@]}"}
  infer_run_dir=$(cat "$run_dir_file"); rm -f "$run_dir_file"
  log "Stage 3 wrote $infer_run_dir"
  [ -n "$eval_input_dir" ] || eval_input_dir=$infer_run_dir
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "Stage 4: evaluation of $eval_input_dir"
  mapfile -d '' extra < <(opt_args --output_dir "$eval_output_dir" --asr "$eval_asr" \
    --asr_model "$eval_asr_model" --sim "$eval_sim" --sim_model "$eval_sim_model" \
    --mos "$eval_mos")
  python bins/tts/evaluate.py --config "$config" --input_dir "$eval_input_dir" \
    ${extra[@]+"${extra[@]}"}
fi

log "Successfully finished [elapsed=$(( $(date +%s) - start_time ))s]"
