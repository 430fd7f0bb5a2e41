#!/usr/bin/env bash
# The CPU study of docs/results.md: PGD-AT vs PGD-AT + RPAT (two seeds each), the standard and noise
# references, the perception diagnostic on each, standard AutoAttack on the first 1,000 test points, and the
# report. Usage: TFDS_DIR=/path/to/tfds bash benchmarks/study_cpu.sh [RUNS_DIR]   (about two hours on 2 CPU cores)
set -euo pipefail
: "${TFDS_DIR:?set TFDS_DIR to a TFDS data_dir holding cifar10_jpeg}"
RUNS=${1:-runs/study}
mkdir -p "$RUNS"
timed() { local start=$SECONDS; "$@"; echo "[study] $(( SECONDS - start )) s: $*" | tee -a "$RUNS/timings.txt"; }
train() {  # name words seed
  timed python -m rpat_jax.main --config="configs/cpu_study.py:$2" --workdir="$RUNS/$1" \
    --config.data.data_dir="$TFDS_DIR" --config.seed="$3" --config.log.progress=lines
}
train pgdat_s0 pgd_at,no_rpat 0
train rpat_s0 pgd_at,rpat 0
train standard_s0 standard 0
train noise_s0 noise 0
train pgdat_s1 pgd_at,no_rpat 1
train rpat_s1 pgd_at,rpat 1
for run in standard_s0 noise_s0 pgdat_s0 rpat_s0 pgdat_s1 rpat_s1; do
  for kind in pgd random; do
    timed python -m rpat_jax.perception --workdir="$RUNS/$run" --checkpoint=last --perturbation=$kind --n_examples=1000
  done
done
for run in pgdat_s0 rpat_s0 pgdat_s1 rpat_s1; do
  timed python -m rpat_jax.evaluate --workdir="$RUNS/$run" --checkpoint=last --n_examples=1000
done
timed python -m rpat_jax.report "$RUNS"/{standard_s0,noise_s0,pgdat_s0,rpat_s0,pgdat_s1,rpat_s1} --out="$RUNS/report"
