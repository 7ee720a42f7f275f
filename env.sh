# Source me:  . ./env.sh   (from anywhere). Activates .venv and sets what the recipes need.
# Installs nothing: run `make test` or `make demo` once to create .venv.
if [ -n "${BASH_SOURCE:-}" ]; then _codectts_here=${BASH_SOURCE[0]}; else _codectts_here=$0; fi
CODECTTS_ROOT=$(cd "$(dirname "$_codectts_here")" && pwd)
export CODECTTS_ROOT
unset _codectts_here
if [ -f "$CODECTTS_ROOT/.venv/bin/activate" ]; then
  . "$CODECTTS_ROOT/.venv/bin/activate"
else
  echo "env.sh: $CODECTTS_ROOT/.venv does not exist yet; run 'make test' or 'make demo' first" >&2
fi
export PYTHONPATH="$CODECTTS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONIOENCODING=UTF-8
# Deterministic, quiet CPU behaviour; tokenizers/OMP threads are set per process by our scripts.
export TF_CPP_MIN_LOG_LEVEL=3
export HF_HUB_DISABLE_TELEMETRY=1
