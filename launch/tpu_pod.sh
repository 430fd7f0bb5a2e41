#!/usr/bin/env bash
# Runs one rpat_jax command on every worker of a Cloud TPU VM pod slice (v4-32, v5litepod-64, ...). Run it on
# all workers at once; JAX finds the coordinator, the process count and this worker's id on its own.
#
#   gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd ~/rpat_jax && \
#     launch/tpu_pod.sh python -m rpat_jax.main --config=configs/wrn.py --workdir=gs://BUCKET/runs/wrn"
#
# The same code and data must be on every worker (clone the repo and `pip install -r requirements.txt
# jax[tpu]` on each, or use a shared image). `--workdir` must be one shared location (a GCS bucket or
# NFS): Orbax writes checkpoints from process 0 and the others wait for it. The config's batch_size is
# the global batch over all chips. RPAT_INIT_TIMEOUT (default 300) bounds the wait for all workers.
#
# RPAT_DRY_RUN=1 runs nothing: on a workstation it prints the gcloud line above for your slice and the
# command each worker then runs. It needs TPU_NAME, ZONE and ACCELERATOR_TYPE (the slice type as gcloud
# names it: v5litepod-16, v4-32, v5p-16, v6e-16, v3-32, ...); RPAT_REPO_DIR is the repository's directory
# on the workers (default ~/rpat_jax).
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
TIMEOUT=${RPAT_INIT_TIMEOUT:-300}
if [ "${RPAT_DRY_RUN:-}" != 1 ]; then
  exec "$@" --distributed=on --init_timeout="$TIMEOUT"
fi

# Prints "HOSTS CHIPS_PER_HOST" for a slice type, or fails. The number in the name counts TensorCores
# for v2, v3 (8 per host), v4 and v5p (2 per chip, 4 chips per host): 8 per host either way. For v5e
# (v5litepod) and v6e it counts chips: up to 8 on one host, and 4 per host in larger slices.
slice_hosts() {
  local generation=${1%-*} size=${1##*-}
  [[ $1 == *-* && $size =~ ^[1-9][0-9]*$ ]] || return 1
  case $generation in
    v2 | v3 | v4 | v5p)
      ((size % 8 == 0)) || return 1
      echo "$((size / 8)) 4" ;;
    v5litepod | v5e | v6e)
      if ((size <= 8)); then
        echo "1 $size"
      else
        ((size % 4 == 0)) || return 1
        echo "$((size / 4)) 4"
      fi ;;
    *) return 1 ;;
  esac
}

for name in TPU_NAME ZONE ACCELERATOR_TYPE; do
  if [ -z "${!name:-}" ]; then
    case $name in
      TPU_NAME) example=my-tpu ;; ZONE) example=us-west4-a ;; ACCELERATOR_TYPE) example=v5litepod-16 ;;
    esac
    echo "tpu_pod.sh: RPAT_DRY_RUN=1 needs $name, e.g. $name=$example" >&2
    exit 2
  fi
done
if ! shape=$(slice_hosts "$ACCELERATOR_TYPE"); then
  echo "tpu_pod.sh: ACCELERATOR_TYPE=$ACCELERATOR_TYPE is not a slice type; expected v2-N, v3-N, v4-N or v5p-N" \
    "(N TensorCores, a multiple of 8) or v5litepod-N, v5e-N or v6e-N (N chips: 1 to 8, or a multiple of 4)" >&2
  exit 2
fi
read -r hosts chips <<<"$shape"

# Every argument quoted as the shell reads it back, so that each printed line can be pasted.
quoted() { local out=() arg; for arg in "$@"; do out+=("$(printf '%q' "$arg")"); done; echo "${out[*]}"; }
# "~/dir" stays unquoted at its start so that the worker's shell expands it to the worker's home: a
# literal ~ here.
repo_dir=${RPAT_REPO_DIR:-'~/rpat_jax'}
# shellcheck disable=SC2088
if [[ $repo_dir == '~/'* ]]; then
  repo_dir="~/$(quoted "${repo_dir#'~/'}")"
else
  repo_dir=$(quoted "$repo_dir")
fi
env_prefix=""
if [ -n "${RPAT_INIT_TIMEOUT:-}" ]; then  # The workers' own default is 300: pass a different one on.
  env_prefix="RPAT_INIT_TIMEOUT=$(quoted "$RPAT_INIT_TIMEOUT") "
fi
remote="cd $repo_dir && ${env_prefix}launch/tpu_pod.sh $(quoted "$@")"
# Inside double quotes the local shell still reads \ " $ and `: escape them.
remote=${remote//\\/\\\\}; remote=${remote//\"/\\\"}; remote=${remote//\$/\\\$}; remote=${remote//\`/\\\`}
echo "gcloud compute tpus tpu-vm ssh $(quoted "$TPU_NAME") --zone=$(quoted "$ZONE") --worker=all --command=\"$remote\""
plural() { if (($1 == 1)); then echo "$1 $2"; else echo "$1 ${2}s"; fi; }
echo "$ACCELERATOR_TYPE: $(plural "$hosts" worker) x $(plural "$chips" chip); JAX finds the coordinator (worker 0)," \
  "the process count and each worker's id from the TPU metadata"
command_line=$(quoted "$@" --distributed=on --init_timeout="$TIMEOUT")
for ((i = 0; i < hosts; i++)); do
  echo "worker $i: $command_line"
done
