# utils/launch.sh: how a recipe runs its Python stages on the GPUs; source after env.sh and
# utils/parse_options.sh (for log). `--gpu` is interpreted here and nowhere else:
#
#   use_gpus "$gpu"                 ids -> CUDA_VISIBLE_DEVICES (empty: leave every GPU visible);
#                                   the Python stages then use exactly the visible devices
#   num_visible_gpus                how many GPUs torch sees (0 on a CPU-only machine)
#   launch_python N SCRIPT ARG...   N > 1: `accelerate launch`, one process per GPU (DDP);
#                                   otherwise one plain `python` process (a GPU or the CPU)

use_gpus() {  # use_gpus IDS: restrict the recipe's processes to these GPUs (before CUDA starts)
  [ -n "$1" ] || return 0
  export CUDA_VISIBLE_DEVICES=${1// /}  # "0, 1" means 0,1
  [ "$(num_visible_gpus)" -gt 0 ] ||
    log "WARNING: --gpu $CUDA_VISIBLE_DEVICES given but no CUDA GPU is visible: the CPU is used"
}

num_visible_gpus() {
  python -c 'import torch; print(torch.cuda.device_count())'
}

free_port() {  # a TCP port nobody listens on now, for the processes' rendezvous
  python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

launch_python() {  # launch_python N SCRIPT ARG...
  local n=$1
  shift
  [[ $n =~ ^[0-9]+$ ]] || die "launch_python: process count '$n' is not a number"
  if [ "$n" -le 1 ]; then
    python "$@"
    return
  fi
  # Single node. Multi-node would set --num_machines/--machine_rank/--main_process_ip and a
  # fixed --main_process_port here, from the recipe's options (--num_processes: all nodes' GPUs).
  local launch=(--multi_gpu --num_processes "$n" --num_machines 1
    --main_process_port "$(free_port)" --dynamo_backend no)
  log "launching $n training processes: accelerate launch ${launch[*]} $*"
  python -m accelerate.commands.launch "${launch[@]}" "$@"  # = `accelerate launch`, same python
}

run_inference() {  # run_inference SCRIPT ARG...: a stage-3 entry point; $infer_run_dir = its folder
  local file rc=0
  file=$(mktemp)
  python "$@" --run_dir_file "$file" || rc=$?
  infer_run_dir=$(cat "$file")
  rm -f "$file"
  return "$rc"
}
