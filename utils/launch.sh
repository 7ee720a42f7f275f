# utils/launch.sh: how a recipe runs its Python stages on the GPUs of one or several machines;
# source after env.sh and utils/parse_options.sh (for log / die). `--gpu` is interpreted here
# and nowhere else, and so are torchrun's node options:
#
#   use_gpus "$gpu"                 ids -> CUDA_VISIBLE_DEVICES (empty: leave every GPU visible);
#                                   the Python stages then use exactly the visible devices
#   num_visible_gpus                how many GPUs torch sees (0 on a CPU-only machine)
#   check_nodes K N R HOST PORT     validate --nproc_per_node K (empty: the visible GPUs),
#                                   --num_nodes N, --node_rank R, --master_addr, --master_port
#   launched_world                  "WORLD_SIZE RANK LAUNCHER" of an outer launcher (torchrun,
#                                   accelerate launch, srun; utils/distributed.py), "1 0 none"
#   check_launch                    check_nodes on run.sh's node options; started by a launcher,
#                                   only --stage 2 --stop_stage 2 may run (recipe_env calls it)
#   launch_python K N R HOST PORT SCRIPT ARG...
#                                   already launched as a rank: SCRIPT runs in this process;
#                                   K x N > 1: `accelerate launch`, K processes on this node of N;
#                                   otherwise one plain `python` process (a GPU or the CPU)
#   launch_python N SCRIPT ARG...   the same on one node with N processes (recipes without
#                                   node options: N = num_visible_gpus)
#   run_stoppable CMD...            CMD; a SIGINT / SIGTERM to this shell (which CMD's processes
#                                   get too: they save and exit 0) waits for CMD, then ends the
#                                   script with CMD's status instead of going on

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

check_nodes() {  # check_nodes NPROC NUM_NODES NODE_RANK MASTER_ADDR MASTER_PORT
  local nproc=$1 nodes=$2 rank=$3 addr=$4 port=$5
  [[ -z $nproc || $nproc =~ ^[1-9][0-9]*$ ]] ||
    die "--nproc_per_node must be a whole number >= 1 (got '$nproc'; empty: one per visible GPU)"
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--num_nodes must be a whole number >= 1 (got '$nodes')"
  [[ $rank =~ ^[0-9]+$ ]] || die "--node_rank must be a whole number (got '$rank')"
  [ "$rank" -lt "$nodes" ] ||
    die "--node_rank $rank is not below --num_nodes $nodes (node ranks are 0 .. $((nodes - 1)))"
  [[ -z $port || ($port =~ ^[0-9]+$ && $port -ge 1 && $port -le 65535) ]] ||
    die "--master_port must be a TCP port number 1-65535 (got '$port')"
  [ "$nodes" -eq 1 ] || [ -n "$addr" ] ||
    die "--num_nodes $nodes needs --master_addr: the host name or IP of node 0, the same on every node"
}

launched_world() {  # launched_world: "WORLD_SIZE RANK LAUNCHER" of the launcher that started us
  python -m utils.distributed
}

launch_python() {  # launch_python NPROC NUM_NODES NODE_RANK MASTER_ADDR MASTER_PORT SCRIPT ARG...
  if [[ $# -ge 2 && ! $2 =~ ^[0-9]+$ ]]; then  # one-node form `launch_python N SCRIPT ...`
    [[ $1 =~ ^[0-9]+$ ]] || die "launch_python: process count '$1' is not a number"
    local n=""  # of a recipe without node options; N <= 1 is the default (0 or 1 GPU)
    [ "$1" -le 1 ] || n=$1
    set -- "$n" 1 0 "" "" "${@:2}"
  fi
  local nproc=$1 nodes=$2 rank=$3 addr=$4 port=$5 world wrank launcher
  shift 5
  check_nodes "$nproc" "$nodes" "$rank" "$addr" "$port"
  read -r world wrank launcher < <(launched_world)
  if [ "$launcher" != none ]; then
    if [[ $nodes == 1 && $rank == 0 && -z $nproc ]]; then  # no node options: its world
      log "$launcher started this process as rank $wrank of $world: no second launcher"
      [ -z "$addr" ] || export MASTER_ADDR=$addr  # srun: the rendezvous host and port
      [ -z "$port" ] || export MASTER_PORT=$port
      run_stoppable python "$@"
      return
    fi
    [ "$launcher" = srun ] ||
      die "this process is already rank $wrank of $world started by $launcher, which owns the" \
        "processes: drop --num_nodes/--node_rank/--nproc_per_node, or run run.sh without it"
    log "srun started one task per node: --num_nodes $nodes --node_rank $rank start this node's"
  fi
  [ -n "$nproc" ] || nproc=$(num_visible_gpus)
  [ "$nproc" -ge 1 ] || nproc=1  # the CPU
  if [ $((nproc * nodes)) -le 1 ]; then
    run_stoppable python "$@"
    return
  fi
  # --num_processes is the total over all nodes; every node is given node 0's address and the
  # same port (default 29500, torchrun's); a single node takes a free port.
  local launch=(--multi_gpu --num_processes $((nproc * nodes)) --num_machines "$nodes"
    --dynamo_backend no)
  if [ "$nodes" -gt 1 ]; then
    launch+=(--machine_rank "$rank" --main_process_ip "$addr" --main_process_port "${port:-29500}")
  else
    launch+=(--main_process_port "${port:-$(free_port)}")
  fi
  local where=""
  [ "$nodes" -eq 1 ] || where=" on node $rank of $nodes ($((nproc * nodes)) in all)"
  log "launching $nproc training processes$where: accelerate launch ${launch[*]} $*"
  run_stoppable python -m accelerate.commands.launch "${launch[@]}" "$@"  # = accelerate launch
}

run_stoppable() {  # run_stoppable CMD...: see the top of this file
  local stopped="" rc=0
  trap 'stopped=SIGTERM' TERM  # bash runs a trap once the foreground CMD has ended
  trap 'stopped=SIGINT' INT
  "$@" || rc=$?
  trap - TERM INT
  [ -n "$stopped" ] || return "$rc"
  # torch's launcher (under accelerate launch) exits 1 after forwarding a signal to its
  # processes, even when they saved and exited 0: their own lines above say what they did
  log "$stopped received: training ended (status $rc); not going on to later stages"
  exit "$rc"
}

run_inference() {  # run_inference SCRIPT ARG...: a stage-3 entry point; $infer_run_dir = its folder
  local file rc=0
  file=$(mktemp)
  python "$@" --run_dir_file "$file" || rc=$?
  infer_run_dir=$(cat "$file")
  rm -f "$file"
  return "$rc"
}

check_launch() {  # check_launch: run.sh's node options (utils/parse_options.sh node_options)
  # valid; started by torchrun / srun (one copy per process), only stage 2 may run
  local world world_rank launcher
  check_nodes "$nproc_per_node" "$num_nodes" "$node_rank" "$master_addr" "$master_port"
  read -r world world_rank launcher < <(launched_world)
  [ "$launcher" = none ] || { [ "$stage" -eq 2 ] && [ "$stop_stage" -eq 2 ]; } ||
    die "$launcher started this script as rank $world_rank of $world: run only --stage 2" \
      "--stop_stage 2 that way (one copy per process); the other stages run once, outside it"
}
