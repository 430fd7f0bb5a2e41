#!/usr/bin/env bash
# What K seeds in one program cost on this machine (issue 31), against K single runs one after another.
#   bash benchmarks/seeds_cost_cpu.sh OUT_DIR [models]      # models: any of smoke prn18 e2e (default all three)
# Per model and K = 1, 2, 4, 8: `python -m rpat_jax.bench` of the K-seed step (float32, the CPU's default
# seed_compute): ms per step, images/s per seed, compile seconds, bytes per device, and the process's wall
# time. `e2e`: the README's smoke run with --config.seeds=4 against four single runs, end to end.
# Run it alone on the machine: the figures are times.
set -eu
OUT=${1:?usage: seeds_cost_cpu.sh OUT_DIR [smoke] [prn18] [e2e]}; shift
MODELS=${*:-smoke prn18 e2e}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
bench() {  # name config batch steps K
  local start=$SECONDS
  python -m rpat_jax.bench --config="$2" --config.seeds="$5" --batch_size="$3" --steps="$4" --warmup=1 \
    --flops=false --dtype=float32 --num_train=2560 --out="$OUT/$1_k$5.json" > "$OUT/$1_k$5.log" 2>&1
  echo "$1 K=$5 wall $((SECONDS - start)) s" | tee -a "$OUT/wall.txt"
}
for model in $MODELS; do
  case $model in
    smoke) for K in 1 2 4 8; do bench smoke configs/smoke.py 128 10 $K; done ;;
    prn18) for K in 1 2 4 8; do bench prn18 configs/prn18.py 16 3 $K; done ;;
    e2e)
      for S in 0 1 2 3; do
        rm -rf "$OUT/e2e_s$S"; start=$SECONDS
        python -m rpat_jax.main --config=configs/smoke.py --workdir="$OUT/e2e_s$S" --config.seed=$S \
          --config.log.progress=none > "$OUT/e2e_s$S.log" 2>&1
        echo "e2e single seed $S wall $((SECONDS - start)) s" | tee -a "$OUT/wall.txt"
      done
      rm -rf "$OUT/e2e_k4"; start=$SECONDS
      python -m rpat_jax.main --config=configs/smoke.py --workdir="$OUT/e2e_k4" --config.seeds=4 \
        --config.log.progress=none > "$OUT/e2e_k4.log" 2>&1
      echo "e2e seeds=4 wall $((SECONDS - start)) s" | tee -a "$OUT/wall.txt" ;;
  esac
done
python - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
print('| model | batch per seed | K | ms per step | images/s per seed | images/s, all seeds | compile s | MiB per device |')
print('|---|---|---|---|---|---|---|---|')
for path in sorted(glob.glob(os.path.join(out, '*_k*.json')), key=lambda p: (p.split('_k')[0], int(p.split('_k')[1][:-5]))):
  r = json.load(open(path))
  print(f"| {r['model']} | {r['batch_size']} | {r['seeds']} | {r['step_ms']['median']:.0f} | "
        f"{r['images_per_second_per_seed']:.1f} | {r['images_per_second']:.1f} | {r['compile_seconds']:.1f} | "
        f"{r['memory']['total'] / 2**20:.0f} |")
PY
