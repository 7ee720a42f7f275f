# utils/parse_options.sh: the option parser of every recipe's run.sh (Kaldi/icefall spirit).
# Source it from bash, declare each option once (name, default, help line), then parse:
#
#   . "$root/utils/parse_options.sh"
#   help_message="Usage: run.sh [options] ..."       # printed above the option list by --help
#   opt -s stage 1 "first recipe stage to run"       # variable $stage, --stage V, --stage=V, -s V
#   opt stop_stage "" "last recipe stage [same as --stage]"
#   opt_alias test_list_file infer_test_list_file    # --test_list_file sets $infer_test_list_file
#   parse_options "$@"
#
# Each option becomes a shell variable of its name holding the default until the command line
# sets it. A non-empty default is shown in brackets after the help line; an option whose default
# is empty says in its own help what empty means. Unknown options, a missing value and stray
# arguments stop the script naming the culprit; -h / --help prints every option and exits.
# Also here: log / die (timestamped, icefall style), one_of (value checks) and the recipe-stage
# helpers stage_selected / needs (required options checked before any stage runs), and opt_args
# (options handed on to a stage's entry point). The option blocks every recipe shares are
# declared here once: recipe_options (--config --name --stage --stop_stage --gpu --resume*),
# node_options (stage 2 on several machines), stage3_options (decoding, --infer_num_workers,
# --infer_avg, stage 4's folders); recipe_checks / recipe_env / train_args / stage3_args check
# them, set up the environment and hand them on.

if [ -z "${BASH_VERSION:-}" ]; then
  echo "utils/parse_options.sh needs bash (re-exec the script under bash first)" >&2
  exit 1
fi

_opt_names=()             # declaration order, for --help
declare -A _opt_help=()   # name -> help line (with the default)
declare -A _opt_short=()  # -x -> name
declare -A _opt_flag=()   # name -> "-x, " (--help column)
declare -A _opt_alias=()  # alias -> name

_log() {  # _log DEPTH MESSAGE: timestamp (file:line:function of the recipe code that called)
  local d=$(($1 + 1)) file
  shift
  # an error found inside this library (needs, one_of, ...) is reported where the recipe called it
  while [[ ${BASH_SOURCE[d]:-} == "${BASH_SOURCE[0]}" ]] && ((d + 1 < ${#BASH_SOURCE[@]})); do
    d=$((d + 1))
  done
  file=${BASH_SOURCE[d]:-$0}
  echo "$(date '+%Y-%m-%d %H:%M:%S') (${file##*/}:${BASH_LINENO[d - 1]:-0}:${FUNCNAME[d]:-main}) $*"
}
log() { _log 1 "$*"; }
die() { _log 1 "ERROR: $*" >&2; exit 1; }

opt() {  # opt [-x] NAME DEFAULT HELP: declare --NAME (and -x); $NAME = DEFAULT
  local _short=""
  if [[ $# -eq 4 && $1 == -? ]]; then _short=$1; shift; fi
  [ $# -eq 3 ] || die "opt: expected [-x] NAME DEFAULT HELP, got: $*"
  [[ $1 =~ ^[a-z][a-z0-9_]*$ && $1 != help ]] || die "opt: bad option name '$1'"
  [ -z "${_opt_help[$1]+set}" ] || die "opt: --$1 is declared twice"
  _opt_names+=("$1")
  _opt_help[$1]=$3${2:+ [$2]}
  printf -v "$1" '%s' "$2"
  if [ -n "$_short" ]; then
    [[ $_short != -h && -z "${_opt_short[$_short]:-}" ]] || die "opt: $_short is taken"
    _opt_short[$_short]=$1
    _opt_flag[$1]="$_short, "
  fi
}

opt_alias() {  # opt_alias ALIAS NAME: --ALIAS is another spelling of the declared --NAME
  [ -n "${_opt_help[$2]+set}" ] || die "opt_alias: --$2 is not declared"
  _opt_alias[$1]=$2
  _opt_help[$2]+=" (alias: --$1)"
}

options_help() {  # the script's help_message, then every declared option with its help line
  local _name _width=4
  [ -z "${help_message:-}" ] || printf '%s\n' "$help_message"
  echo "Options (default in brackets):"
  for _name in "${_opt_names[@]}"; do
    ((${#_name} <= _width)) || _width=${#_name}
  done
  for _name in "${_opt_names[@]}"; do
    printf '  %4s--%-*s  %s\n' "${_opt_flag[$_name]:-}" "$_width" "$_name" "${_opt_help[$_name]}"
  done
  printf '  %4s--%-*s  %s\n' "-h, " "$_width" help "print this help and exit"
}

parse_options() {  # parse_options "$@": --name value, --name=value, -x value, -h/--help
  local _arg _name _value
  while [ $# -gt 0 ]; do
    _arg=$1
    case "$_arg" in
      -h | --help) options_help; exit 0 ;;
      --?*=*) _name=${_arg%%=*}; _name=${_name#--} ;;
      --?*) _name=${_arg#--} ;;
      -?) _name=${_opt_short[$_arg]:-}
          [ -n "$_name" ] || die "unknown option '$_arg' (see --help)" ;;
      *) die "unexpected argument '$_arg': options are --name value pairs (see --help)" ;;
    esac
    _name=${_opt_alias[$_name]:-$_name}
    [ -n "${_opt_help[$_name]+set}" ] || die "unknown option '--$_name' (see --help for the list)"
    if [[ $_arg == --*=* ]]; then
      _value=${_arg#*=}
      shift
    else
      [ $# -ge 2 ] || die "option $_arg needs a value (see --help)"
      _value=$2
      shift 2
    fi
    printf -v "$_name" '%s' "$_value"
  done
}

one_of() {  # one_of NAME CHOICE...: stop unless $NAME is one of the choices
  local _name=$1 _choice _list
  shift
  for _choice in "$@"; do
    [ "${!_name}" != "$_choice" ] || return 0
  done
  _list=${*: -1}
  if [ $# -gt 1 ]; then
    _list=$(printf '%s, ' "${@:1:$#-1}")
    _list="${_list%, } or ${*: -1}"
  fi
  die "--$_name must be $_list (got '${!_name}')"
}

# Recipe stages (`--stage` .. `--stop_stage`, icefall style); the recipe declares both options.
stage_selected() {  # stage_selected N: true when recipe stage N is in --stage .. --stop_stage
  [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]
}

check_stages() {  # check_stages N: --stage/--stop_stage in 1..N and in order (--stop_stage
  # defaults to --stage); --config names an existing file (made absolute, as stages cd away)
  [ -n "$stop_stage" ] || stop_stage=$stage
  # shellcheck disable=SC2046
  one_of stage $(seq 1 "$1")
  # shellcheck disable=SC2046
  one_of stop_stage $(seq 1 "$1")
  [ "$stage" -le "$stop_stage" ] || die "--stage ($stage) is after --stop_stage ($stop_stage)"
  [ -f "$config" ] || die "config file not found: $config (--config)"
  config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
}

absolute_paths() {  # absolute_paths NAME...: the relative paths in these options made absolute
  # (relative to the caller's directory: do it before the recipe cd's to the repository root)
  local _name
  for _name in "$@"; do
    case "${!_name}" in "" | /*) ;; *) printf -v "$_name" '%s' "$PWD/${!_name}" ;; esac
  done
}

needs() {  # needs N OPTION...: stop before anything runs when stage N will run without them
  local _stage=$1 _name
  shift
  stage_selected "$_stage" || return 0
  for _name in "$@"; do
    [ -n "${!_name}" ] || die "stage $_stage needs --$_name (see --help)"
  done
}

# Passing options on to a stage's Python entry point:
#   mapfile -d '' extra < <(opt_args --top_k "$infer_top_k" --seed "$infer_seed")
#   python bins/x.py ${extra[@]+"${extra[@]}"}
opt_args() {  # opt_args FLAG VALUE...: NUL-separated FLAG VALUE pairs, the empty VALUEs left out
  while [ $# -gt 0 ]; do
    [ -z "$2" ] || printf '%s\0%s\0' "$1" "$2"
    shift 2
  done
}

# ---- the option blocks every recipe's run.sh shares (declared here once) ---------------------
recipe_options() {  # recipe_options: --config (default: the recipe's exp_config.json), --name,
  # --stage/--stop_stage, --gpu and stage 2's --resume* (call after setting $exp_dir)
  opt -c config "$exp_dir/exp_config.json" "json5 recipe config"
  opt -n name "" "stage 2: experiment name, written to <log_dir>/NAME"
  opt -s stage 1 "first recipe stage: 1 data, 2 training, 3 inference, 4 evaluation"
  opt stop_stage "" "last recipe stage to run [same as --stage]"
  opt gpu "" "visible GPU ids, e.g. 0,1 [all; the CPU when there is none]"
  opt resume false "stage 2: continue the experiment (true/false)"
  opt resume_from_ckpt_path "" "stage 2: checkpoint dir to resume from [newest of the experiment]"
  opt resume_type resume "stage 2: resume (everything) or finetune (weights only)"
}

node_options() {  # node_options: stage 2 on several machines (torchrun's names; utils/launch.sh
  # check_launch validates them, launch_python uses them)
  opt nproc_per_node "" "stage 2: training processes on this node [one per visible GPU; CPU: 1]"
  opt num_nodes 1 "stage 2: machines training together (torchrun's --nnodes)"
  opt node_rank 0 "stage 2: this machine's rank, 0 .. num_nodes-1"
  opt master_addr "" "stage 2: host name or IP of node 0 (needed when num_nodes > 1)"
  opt master_port "" "stage 2: rendezvous TCP port on node 0 [29500 with num_nodes > 1; else free]"
}

stage3_options() {  # stage3_options: the decoding options every recipe's stage 3 takes
  opt infer_output_dir "" "stage 3: output folder [<infer_expt_dir>/result]"
  opt infer_checkpoint "" "stage 3: latest or best [inference.checkpoint]"
  opt infer_top_p "" "stage 3: nucleus sampling [inference.top_p]"
  opt infer_temperature "" "stage 3: sampling temperature [inference.temperature]"
  opt infer_seed "" "stage 3: sampling seed [inference.seed]"
  opt infer_batch_size "" "stage 3: lines decoded together [inference.batch_size]"
  opt infer_num_workers "" "stage 3 batch: processes sharing the list [one per visible GPU, else 1]"
  opt infer_avg 1 "stage 3: mean of the last N checkpoints, or NAME,NAME,... (in checkpoint/)"
  opt overwrite false "stage 3: write into an existing output folder (true/false)"
  opt eval_input_dir "" "stage 4: stage-3 folder with results.jsonl [with 3: the one written]"
  opt eval_output_dir "" "stage 4: metrics and summary [<eval_input_dir>/eval]"
}

train_args() {  # train_args: recipe_options' stage-2 values for the entry point (opt_args' format)
  opt_args --config "$config" --exp_name "$name" --resume "$resume" --resume_type "$resume_type" \
    --resume_from_ckpt_path "$resume_from_ckpt_path"
}

stage3_args() {  # stage3_args: stage3_options' values for the entry point (opt_args' format)
  opt_args --output_dir "$infer_output_dir" --checkpoint "$infer_checkpoint" \
    --top_p "$infer_top_p" --temperature "$infer_temperature" --seed "$infer_seed" \
    --batch_size "$infer_batch_size" --num_workers "$infer_num_workers" --avg "$infer_avg"
}

recipe_checks() {  # recipe_checks N: what recipe_options / stage3_options take, checked:
  # --stage .. --stop_stage in 1..N, --config exists, true/false and resume/finetune values
  check_stages "$1"
  one_of resume true false
  one_of resume_type resume finetune
  one_of overwrite true false
  needs 2 name
}

recipe_env() {  # recipe_env: the venv (env.sh) and utils/launch.sh; the node options checked:
  # under torchrun / srun only stage 2 runs (one copy per process)
  [ -f "$work_dir/.venv/bin/activate" ] || die "$work_dir/.venv is missing: run 'make install' once"
  # shellcheck disable=SC1091
  . "$work_dir/env.sh"
  . "$work_dir/utils/launch.sh"
  check_launch
}
