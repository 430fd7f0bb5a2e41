#!/usr/bin/env bash
# The CPU study of docs/results.md: PGD-AT vs PGD-AT + RPAT, five seeds each, each arm one K-seed run
# (--config.seeds=5: seeds 0-4 in one program); standard AutoAttack and the perception diagnostic on the
# first 1,000 test points of every seed; the standard and noise references (seed 0) for the diagnostic;
# the report. Every step resumes: run the same command again after an interruption.
# Usage: TFDS_DIR=/path/to/tfds bash benchmarks/study_cpu.sh [RUNS_DIR]
set -euo pipefail
: "${TFDS_DIR:?set TFDS_DIR to a TFDS data_dir holding cifar10_jpeg}"
RUNS=${1:-runs/study}
SEEDS=5
mkdir -p "$RUNS"
timed() { local start=$SECONDS; "$@"; echo "[study] $(date -u +%H:%M) $(( SECONDS - start )) s: $*" | tee -a "$RUNS/timings.txt"; }
train() {  # name words seeds
  timed python -m rpat_jax.main --config="configs/cpu_study.py:$2" --workdir="$RUNS/$1" \
    --config.data.data_dir="$TFDS_DIR" --config.seed=0 --config.seeds="$3" --config.log.progress=lines
}
done_already() { [ -f "$1" ]; }
train pgdat pgd_at,no_rpat $SEEDS
train rpat pgd_at,rpat $SEEDS
for seed in $(seq 0 $((SEEDS - 1))); do  # Seed by seed, both arms: the pairs complete one after another.
  for run in pgdat rpat; do
    for kind in pgd random; do
      done_already "$RUNS/$run/eval/seed_$seed/perception_$kind.json" || timed python -m rpat_jax.perception \
        --workdir="$RUNS/$run" --checkpoint=last --perturbation=$kind --n_examples=1000 --seeds=$seed
    done
    done_already "$RUNS/$run/eval/seed_$seed/results.json" || timed python -m rpat_jax.evaluate \
      --workdir="$RUNS/$run" --checkpoint=last --n_examples=1000 --seeds=$seed
  done
done
train standard standard 1
train noise noise 1
for run in standard noise; do
  for kind in pgd random; do
    done_already "$RUNS/$run/eval/perception_$kind.json" || timed python -m rpat_jax.perception \
      --workdir="$RUNS/$run" --checkpoint=last --perturbation=$kind --n_examples=1000
  done
done
timed python -m rpat_jax.report "$RUNS"/{standard,noise,pgdat,rpat} --out="$RUNS/report"
