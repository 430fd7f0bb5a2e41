#!/usr/bin/env bash
# Runs one rpat_jax command on every worker of a Cloud TPU VM pod slice (v4-32, v5e-64, ...). Run it on all
# workers at once; JAX finds the coordinator, the process count and this worker's id on its own.
#
#   gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd ~/rpat_jax && \
#     launch/tpu_pod.sh python -m rpat_jax.main --config=configs/wrn.py --workdir=gs://BUCKET/runs/wrn"
#
# The same code and data must be on every worker (clone the repo and `pip install -r requirements.txt
# jax[tpu]` on each, or use a shared image). `--workdir` must be one shared location (a GCS bucket or
# NFS): Orbax writes checkpoints from process 0 and the others wait for it. The config's batch_size is
# the global batch over all chips. RPAT_INIT_TIMEOUT (default 300) bounds the wait for all workers.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
exec "$@" --distributed=on --init_timeout="${RPAT_INIT_TIMEOUT:-300}"
