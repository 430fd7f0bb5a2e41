#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md, run on a lent GPU machine (the `device` tool), one row per call.
#
# Once, here, in the repository root (the machine there has jax, flax, optax, orbax and torch, but not
# ml_collections or pyautoattack; Python 3.12):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl ml-collections==1.1.0 pyautoattack==0.2.0
# Then one device call per row, naming `.whl` in carry:
#   bash docs/gpu_rows.sh prn18        # PreActResNet-18 train step, bf16, batch 512, + PyTorch both modes
#   bash docs/gpu_rows.sh prn18_fp32   # the same in float32 (TF32)
#   bash docs/gpu_rows.sh prn18_switches   # rpat.batched_forwards, attack.unroll: their effect on speed
#   bash docs/gpu_rows.sh wrn          # WideResNet-34-10 train step, bf16, batch 256, + PyTorch tuned
#   bash docs/gpu_rows.sh eval         # PGD-20 + standard AutoAttack on 1000 points vs pyautoattack
#   bash docs/gpu_rows.sh profile      # a jax.profiler trace of 3 PreActResNet-18 steps (TensorBoard/Perfetto)
# Each writes its JSON (and the log) under $OUT, which the device tool brings back.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_rows}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt" || true
bench() { python3 -m rpat_jax.bench "$@" 2>&1 | tee -a "$OUT/log.txt"; }
case "${1:?row: prn18, prn18_fp32, prn18_switches, wrn, eval, profile}" in
  prn18) bench --config=configs/prn18.py --torch --out="$OUT/prn18_bf16.json" ;;
  prn18_fp32) bench --config=configs/prn18.py --dtype=float32 --torch --torch_modes=reference \
                    --out="$OUT/prn18_fp32.json" ;;
  prn18_switches)
    bench --config=configs/prn18.py --flops=false --out="$OUT/prn18_default.json"
    bench --config=configs/prn18.py --flops=false --config.rpat.batched_forwards=True --out="$OUT/prn18_batched.json"
    bench --config=configs/prn18.py --flops=false --config.attack.unroll=True --out="$OUT/prn18_unroll.json" ;;
  wrn) bench --config=configs/wrn.py --batch_size=256 --steps=20 --torch --torch_modes=tuned --out="$OUT/wrn_bf16.json" ;;
  eval) bench --config=configs/prn18.py --what=eval --torch --out="$OUT/prn18_eval.json" ;;
  profile)  # The device tool brings back files at most two folders down: lift the trace files up.
    bench --config=configs/prn18.py --steps=5 --flops=false --profile_dir=/tmp/rpat_trace
    find /tmp/rpat_trace -type f \( -name '*.xplane.pb' -o -name '*.trace.json.gz' \) -exec cp {} "$OUT/" \; ;;
  *) echo "unknown row $1; allowed: prn18, prn18_fp32, prn18_switches, wrn, eval, profile" >&2; exit 2 ;;
esac
