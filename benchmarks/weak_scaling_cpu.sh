#!/usr/bin/env bash
# Weak scaling on simulated CPU devices (issue 5): 32 images per device, 20 steps, smoke model.
# Prints: devices, global batch, ms per step, images per second. A functional check, not a speed claim.
cd "$(dirname "$0")/.."
for D in 1 2 4 8; do
  B=$((32 * D)); rm -rf /tmp/weak$D
  XLA_FLAGS=--xla_force_host_platform_device_count=$D python -m rpat_jax.main --config=configs/smoke.py --workdir=/tmp/weak$D \
    --config.batch_size=$B --config.data.synthetic.num_train=$((20 * B)) --config.epochs=1 --config.eval.num_examples=256 \
    --config.log.progress=none > /tmp/weak$D.log 2>&1
  python3 -c "import json; r=json.loads(open('/tmp/weak$D/metrics.jsonl').readline()); print($D, $B, round(1000*r['epoch_seconds']/r['step'],1), round(r['images_per_second'],1))"
done
