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
# (options handed on to a stage's entry point).

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
