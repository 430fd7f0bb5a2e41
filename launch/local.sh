#!/usr/bin/env bash
# N processes of one rpat_jax command on this machine, joined through jax.distributed (what the tests use,
# and a way to try a multi-host set-up on one box).
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS python -m rpat_jax.main --config=configs/smoke.py --workdir=/tmp/run
#
# CPU: each process gets DEVICES_PER_PROCESS simulated CPU devices (XLA_FLAGS). GPUs: each process gets
# its own DEVICES_PER_PROCESS GPUs (CUDA_VISIBLE_DEVICES), so 2 x 4 on an 8-GPU host.
# Environment: RPAT_PORT (coordinator port, default: a free one), RPAT_INIT_TIMEOUT (seconds a process
# waits for the others to join, default 120), RPAT_PLATFORM (cpu or gpu, default: gpu when nvidia-smi
# lists GPUs). Process 0 prints to this terminal; process i>0 to $RPAT_LOG_DIR/process_i.log (default a
# temporary directory, printed). If a process fails, the others are stopped and its exit code returned.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
NUM_PROCESSES=$1; DEVICES=$2; shift 2
PORT=${RPAT_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
TIMEOUT=${RPAT_INIT_TIMEOUT:-120}
PLATFORM=${RPAT_PLATFORM:-$(if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo gpu; else echo cpu; fi)}
LOG_DIR=${RPAT_LOG_DIR:-$(mktemp -d)}
mkdir -p "$LOG_DIR"
echo "local.sh: $NUM_PROCESSES processes x $DEVICES $PLATFORM devices, coordinator localhost:$PORT, logs of processes 1.. in $LOG_DIR" >&2

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  if [ "$PLATFORM" = gpu ]; then
    first=$((i * DEVICES))
    visible=$(seq -s, "$first" $((first + DEVICES - 1)))
    env_vars=(CUDA_VISIBLE_DEVICES="$visible" JAX_PLATFORMS=cuda)
  else
    env_vars=(XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES ${XLA_FLAGS:-}" JAX_PLATFORMS=cpu)
  fi
  args=("$@" --coordinator_address="localhost:$PORT" --num_processes="$NUM_PROCESSES" --process_id="$i"
        --init_timeout="$TIMEOUT")
  if [ "$i" -eq 0 ]; then
    env "${env_vars[@]}" "${args[@]}" &
  else
    env "${env_vars[@]}" "${args[@]}" >"$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

status=0
for ((n = 0; n < NUM_PROCESSES; n++)); do
  wait -n || status=$?
  if [ "$status" -ne 0 ]; then
    echo "local.sh: a process exited with status $status; stopping the others" >&2
    break
  fi
done
exit "$status"
