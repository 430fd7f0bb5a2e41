#!/usr/bin/env bash
# The compile-only rows of docs/benchmarks.md ("Before you rent one"): every command writes docs/aot/<name>.json
# (and .md). Needs a virtualenv with requirements-aot.txt; each TPU compile of WideResNet-34-10 takes minutes
# on a 2-core machine. Rerun one line to refresh its row; `python -m rpat_jax.aot.table docs/aot/*.json`
# prints the reference table from them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=docs/aot
aot() { name=$1; shift; python -m rpat_jax.aot --out="$OUT/$name.json" "$@" || [ $? -eq 1 ]; }  # 1 = a row does not fit.

# Every program of a run and its evaluation, with the batch search: the issue's two targets.
aot wrn_bf16_v5e_4x4 --config=configs/wrn.py --config.model.dtype=bfloat16 --target=v5e:4x4 --weights_as_arguments
aot wrn_bf16_h100x8 --config=configs/wrn.py --config.model.dtype=bfloat16 --target=h100x8 --weights_as_arguments
# The train step of each model, PGD-AT + RPAT in bf16, on each chip (largest batch from one compile).
for model in prn18 resnet18 wrn; do
  aot "${model}_bf16_chips" --config="configs/$model.py" --config.model.dtype=bfloat16 --programs=train_step \
    --search=none --target=v5e:2x2,v5p:2x2x1,v6e:2x2,h100x8,h200x8
done
# RPAT++ in bf16, and both methods in fp32, on v5e and H100 (issue 29's session ran these on h100x8 only:
# a TPU compile of ResNet-18 took 5 minutes on its 2 cores).
for model in prn18 resnet18 wrn; do
  aot "${model}_rpatpp_bf16" --config="configs/$model.py:rpat_plus_plus" --config.model.dtype=bfloat16 \
    --programs=train_step --search=none --target=v5e:2x2,h100x8
  aot "${model}_fp32" --config="configs/$model.py" --config.model.dtype=float32 --programs=train_step \
    --search=none --target=v5e:2x2,h100x8
  aot "${model}_rpatpp_fp32" --config="configs/$model.py:rpat_plus_plus" --config.model.dtype=float32 \
    --programs=train_step --search=none --target=v5e:2x2,h100x8
done
