#!/usr/bin/env bash
# The accelerator rows of docs/benchmarks.md, on any GPU or TPU machine you have: one row per call.
#
# Install (in the repository root; the jax extra matches your machine, see the README's "GPU / TPU"):
#   pip install "jax[cuda12]==0.10.2" && pip install -r requirements-test.txt    # NVIDIA GPU
#   pip install "jax[tpu]==0.10.2" && pip install -r requirements-test.txt       # Cloud TPU VM
# requirements-test.txt brings torch and pyautoattack for the PyTorch side (`--torch`). A machine
# without internet access can install from wheels downloaded elsewhere into `.whl/` (ignored by git):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl ml-collections==1.1.0 pyautoattack==0.2.0
# this script installs what it finds there into /tmp/site before it runs. A machine whose image holds
# another jax release (and no internet to install this one) runs the rows on its own: on an accelerator
# the CPU forms are off (`rpat_jax.cpu.enabled()`), so no part rewrites jaxprs and every program is plain
# jax.jit; the XLA:CPU flag is set only where the CPU is expected to be the default backend.
#
# Run, one row per call (each takes a few minutes on an H100-class GPU):
#   bash benchmarks/gpu_rows.sh prn18        # PreActResNet-18 train step, bf16, batch 512, + PyTorch both modes
#   bash benchmarks/gpu_rows.sh prn18_fp32   # the same in float32 (TF32)
#   bash benchmarks/gpu_rows.sh prn18_switches   # passes.batched, attack.unroll=False: their effect on speed
#   bash benchmarks/gpu_rows.sh wrn          # WideResNet-34-10 train step, bf16, batch 256, + PyTorch tuned
#   bash benchmarks/gpu_rows.sh eval         # PGD-20 + standard AutoAttack on 1000 points vs pyautoattack
#   bash benchmarks/gpu_rows.sh profile      # a jax.profiler trace of 3 PreActResNet-18 steps (TensorBoard/Perfetto)
#
# Results: each row writes its JSON, the log (log.txt) and the accelerator's name (gpu.txt) under $OUT
# (default runs/gpu_rows). Turn the JSON into the tables of docs/benchmarks.md with
#   python benchmarks/bench_table.py runs/gpu_rows/*.json
# and record each figure there with its command, device and date.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_rows}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" \
  || python3 -c "import jax; print(jax.devices()[0].device_kind)" | tee "$OUT/gpu.txt"
bench() { python3 -m rpat_jax.bench "$@" 2>&1 | tee -a "$OUT/log.txt"; }
case "${1:?row: prn18, prn18_fp32, prn18_switches, wrn, eval, profile}" in
  prn18) bench --config=configs/prn18.py --torch --out="$OUT/prn18_bf16.json" ;;
  prn18_fp32) bench --config=configs/prn18.py --dtype=float32 --torch --torch_modes=reference \
                    --out="$OUT/prn18_fp32.json" ;;
  prn18_switches)
    bench --config=configs/prn18.py --flops=false --out="$OUT/prn18_default.json"
    bench --config=configs/prn18.py --flops=false --config.passes.batched=True --out="$OUT/prn18_batched.json"
    bench --config=configs/prn18.py --flops=false --config.attack.unroll=False --out="$OUT/prn18_loop.json" ;;
  wrn) bench --config=configs/wrn.py --batch_size=256 --steps=20 --torch --torch_modes=tuned --out="$OUT/wrn_bf16.json" ;;
  eval) bench --config=configs/prn18.py --what=eval --torch --out="$OUT/prn18_eval.json" ;;
  profile)  # The trace files are copied up beside the JSON, so $OUT holds every result flat.
    bench --config=configs/prn18.py --steps=5 --flops=false --profile_dir=/tmp/rpat_trace
    find /tmp/rpat_trace -type f \( -name '*.xplane.pb' -o -name '*.trace.json.gz' \) -exec cp {} "$OUT/" \; ;;
  *) echo "unknown row $1; allowed: prn18, prn18_fp32, prn18_switches, wrn, eval, profile" >&2; exit 2 ;;
esac
