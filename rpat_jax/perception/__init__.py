"""The paper's motivating diagnostic: how far the logits move between a test point x and its perturbation
x', for the points the model still classifies correctly (success) and those it does not (failure).

For each point: z = z(x), z' = z(x'), z_m = z((x + x') / 2) (eval-mode BatchNorm), and
  d_full = mean_k (z_k - z'_k)^2,  d_first = mean_k (z_k - z_mk)^2,  d_second = mean_k (z_mk - z'_k)^2.
A logit function linear along the segment gives d_first = d_second = d_full / 4. Groups: `success` =
still correct on x', `failure` = not (including points already wrong on x), `all`. Group values are exact
means over the group's points (the official `evals.py` averages per-batch group means weighted by the
batch size; `official_averaging=True` reproduces that, NaN batches included).

Beyond the paper, the linearity profile measures Definition 1 directly: at alphas in [0, 1] the mean
distance ||z(x + alpha (x' - x)) - z(x)||_2; normalised by its value at alpha = 1 it is the diagonal for a
linear response, and `linearity_error` is the mean absolute gap to the diagonal.
"""

import functools
import math
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rpat_jax import attacks
from rpat_jax.sharding import parallel

GROUPS = ('all', 'success', 'failure')
DEFAULT_ALPHAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def perturb(logits_fn: Callable, x: np.ndarray, y: np.ndarray, attack_config, *, kind: str, seed: int,
            batch_size: int, steps: int = attacks.EVAL_PGD_STEPS) -> np.ndarray:
  """x' for host points: PGD-`steps` on the cross-entropy with the run's threat from a random start
  (kind='pgd', the figure's PGD-20), or clip(x + U(-eps, eps)) per pixel (kind='random'). Each point's
  randomness is keyed by its index, so x' does not depend on the batch size."""
  if kind not in ('pgd', 'random'):
    raise ValueError(f'--perturbation={kind}; allowed: pgd, random')
  key = jax.random.key(seed)
  mesh = parallel.make_mesh()
  eps = attack_config.eps

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch(xb, yb, start):
    keys = attacks.point_keys(key, start + jnp.arange(xb.shape[0]))
    if kind == 'random':
      noise = jax.vmap(lambda k, point: jax.random.uniform(k, point.shape, point.dtype, -eps, eps))(keys, xb)
      return jnp.clip(xb + noise, 0.0, 1.0)
    return attacks.pgd(logits_fn, keys, xb, yb, norm=attack_config.norm, eps=eps,
                       step_size=attack_config.step_size, steps=steps)

  return parallel.per_point(batch, x, y, batch_size, mesh)


def point_distances(logits_fn: Callable, x: np.ndarray, x_perturbed: np.ndarray, y: np.ndarray, *,
                    batch_size: int, alphas: Sequence[float] = DEFAULT_ALPHAS) -> Dict[str, np.ndarray]:
  """Per point: d_full, d_first, d_second [N]; profile [N, A] (||z(x + a (x' - x)) - z(x)||_2 at each
  alpha); clean_correct and perturbed_correct [N] bool."""
  mesh = parallel.make_mesh()
  alphas = jnp.asarray(alphas, jnp.float32)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch(both, yb, start):
    del start
    xb, xp = both[..., 0], both[..., 1]
    z, z_p, z_m = (logits_fn(v).astype(jnp.float32) for v in (xb, xp, 0.5 * xb + 0.5 * xp))
    along = jax.vmap(lambda a: logits_fn(xb + a * (xp - xb)).astype(jnp.float32))(alphas)  # [A, B, K]
    scalars = [jnp.mean(jnp.square(z - z_p), -1), jnp.mean(jnp.square(z - z_m), -1),
               jnp.mean(jnp.square(z_m - z_p), -1), (jnp.argmax(z, -1) == yb).astype(jnp.float32),
               (jnp.argmax(z_p, -1) == yb).astype(jnp.float32)]
    profile = jnp.linalg.norm(along - z[None], axis=-1).T  # [B, A]
    return jnp.concatenate([jnp.stack(scalars, 1), profile], 1)  # One array: per_point gathers one.

  both = np.stack([x, x_perturbed], axis=-1)  # One host array, so each batch keeps its pairs together.
  table = parallel.per_point(batch, both, y, batch_size, mesh)
  return {'d_full': table[:, 0], 'd_first': table[:, 1], 'd_second': table[:, 2],
          'clean_correct': table[:, 3] > 0.5, 'perturbed_correct': table[:, 4] > 0.5, 'profile': table[:, 5:]}


def _official_group_mean(values: np.ndarray, members: np.ndarray, batch: int) -> float:
  """evals.py: the group mean within each batch of `batch` points, averaged over batches weighted by the
  batch's full size (a batch with no member gives NaN, as there)."""
  total, count = 0.0, 0
  for start in range(0, len(values), batch):
    chunk, chosen = values[start:start + batch], members[start:start + batch]
    mean = chunk[chosen].mean() if chosen.any() else float('nan')
    total, count = total + mean * len(chunk), count + len(chunk)
  return total / count


def summarise(columns: Dict[str, np.ndarray], *, alphas: Sequence[float] = DEFAULT_ALPHAS,
              official_averaging: bool = False, official_batch: int = 100) -> Dict:
  """The JSON of the diagnostic: accuracies, and per group its count, d_full, d_first, d_second, their
  ratio first/second, the profile and its linearity error."""
  success = columns['perturbed_correct'].astype(bool)
  members = {'all': np.ones_like(success), 'success': success, 'failure': ~success}
  groups = {}
  for name, chosen in members.items():
    count = int(chosen.sum())
    if official_averaging:
      mean = lambda values, chosen=chosen: _official_group_mean(values, chosen, official_batch)
    else:
      mean = lambda values, chosen=chosen, count=count: float(values[chosen].mean()) if count else float('nan')
    d_first, d_second = mean(columns['d_first']), mean(columns['d_second'])
    profile = (columns['profile'][chosen].mean(0) if count else np.full(len(alphas), np.nan)).astype(float)
    end = profile[-1]
    normalised = profile / end if end > 0 else np.full_like(profile, np.nan)
    groups[name] = {
        'count': count, 'd_full': mean(columns['d_full']), 'd_first': d_first, 'd_second': d_second,
        'first_over_second': d_first / d_second if d_second > 0 else float('nan'),
        'profile': {'alphas': [float(a) for a in alphas], 'distance': [float(v) for v in profile]},
        'linearity_error': float(np.mean(np.abs(normalised - np.asarray(alphas)))),
    }
  return {'n_examples': int(len(success)), 'clean_acc': float(columns['clean_correct'].mean()),
          'perturbed_acc': float(success.mean()), 'groups': groups,
          'averaging': 'official per-batch' if official_averaging else 'exact'}


def inconsistencies(result: Dict, *, rtol: float = 1e-4) -> List[str]:
  """What does not add up in a diagnostic's JSON (empty when it is consistent): the group counts against
  n_examples and the perturbed accuracy, `all` against the count-weighted mean of `success` and `failure`
  (exact averaging only; the official per-batch weighting is not such a mean), the profile's 0 at alpha 0."""
  groups, problems = result['groups'], []
  n, success, failure = result['n_examples'], groups['success']['count'], groups['failure']['count']
  if groups['all']['count'] != n or success + failure != n:
    problems.append(f"group counts {success} + {failure} != all {groups['all']['count']} / n_examples {n}")
  if n and abs(success / n - result['perturbed_acc']) > 1e-9:
    problems.append(f"success count {success} of {n} is not the perturbed accuracy {result['perturbed_acc']}")
  if result.get('averaging', 'exact') == 'exact' and n:
    for key in ('d_full', 'd_first', 'd_second'):
      parts = [(groups[g]['count'], groups[g][key]) for g in ('success', 'failure') if groups[g]['count']]
      weighted = sum(count * value for count, value in parts) / sum(count for count, _ in parts)
      if not math.isclose(groups['all'][key], weighted, rel_tol=rtol, abs_tol=1e-12):
        problems.append(f"all.{key} {groups['all'][key]:.6g} != the count-weighted mean {weighted:.6g}")
  for name, group in groups.items():
    if group['count'] and group['profile']['distance'][0] != 0.0:
      problems.append(f"{name}: the profile is {group['profile']['distance'][0]:.3g} at alpha 0, not 0")
  return problems


def diagnose(logits_fn: Callable, x: np.ndarray, y: np.ndarray, attack_config, *, kind: str, seed: int = 0,
             batch_size: int = 100, alphas: Sequence[float] = DEFAULT_ALPHAS, official_averaging: bool = False,
             x_perturbed: Optional[np.ndarray] = None) -> Dict:
  """perturb, point_distances and summarise in one call (x_perturbed: given perturbations instead)."""
  if x_perturbed is None:
    x_perturbed = perturb(logits_fn, x, y, attack_config, kind=kind, seed=seed, batch_size=batch_size)
  columns = point_distances(logits_fn, x, x_perturbed, y, batch_size=batch_size, alphas=alphas)
  result = summarise(columns, alphas=alphas, official_averaging=official_averaging, official_batch=batch_size)
  return {'perturbation': kind, **result}
