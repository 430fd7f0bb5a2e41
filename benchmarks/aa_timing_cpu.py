"""Standard AutoAttack, full official hyperparameters: ours vs pyautoattack on the same CPU and points.

  python benchmarks/aa_timing_cpu.py 200 0.00392156862745098 Linf     # N, eps, norm; needs requirements-test.txt

How the AutoAttack rows of issue 3 in docs/benchmarks.md were made (a network that is no config's model);
for a config's model, `python -m rpat_jax.bench --what=eval --torch` times the same comparison.
"""
import json
import os
import sys
import time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, 'tests'), ROOT]
import numpy as np, torch, jax
import aa_reference as ref
from rpat_jax.autoattack import ensemble
from pyautoattack import AutoAttack
torch.set_num_threads(2)
n, eps, norm = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
w = ref.make_weights(); net = ref.torch_model(w); f = ref.jax_logits_fn(w)
x, y = ref.make_points(n, weights=w)
t = time.time(); ours = ensemble.evaluate(f, x, y, norm=norm, eps=eps, batch_size=n, log=print); t_ours = time.time() - t
t = time.time(); again = ensemble.evaluate(f, x, y, norm=norm, eps=eps, batch_size=n); t_again = time.time() - t
aa = AutoAttack(net, eps=eps, norm=norm, seed=0, version='standard')
t = time.time(); xa, _ = aa.run_standard_evaluation(*ref.to_torch(x, y), batch_size=n); t_off = time.time() - t
robust_off = np.asarray(f(ref.to_nhwc(xa))).argmax(1) == y
print(json.dumps({'n': n, 'eps': eps, 'norm': norm, 'official_robust': float(robust_off.mean()),
  'ours_robust': ours['robust_acc'], 'agreement': float((robust_off == ours['robust']).mean()),
  'ours_per_attack': ours['per_attack'], 'official_seconds': round(t_off, 1), 'ours_seconds_first_call': round(t_ours, 1),
  'ours_seconds_compiled': round(t_again, 1)}))
