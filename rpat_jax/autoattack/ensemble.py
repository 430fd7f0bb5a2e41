"""The AutoAttack ensemble: clean pass, then each attack on the points still robust.

Follows the official `run_standard_evaluation` (docs/autoattack.md, section 1): every attack runs in
chunks of `batch_size` on the points robust when it starts, in index order; a fresh forward pass on
the returned images decides who is fooled; a fooled point is never attacked again; robust accuracy
counts every point, clean-misclassified ones included. Differences, on purpose:
- Randomness: one key per point, fold_in(seed, attack, index), instead of reseeding torch per chunk;
  so results do not depend on the batch size or on which points share a chunk.
- Each attack runs from the host over the points still robust, in bucketed shapes, and a point leaves
  a run once it is fooled (`compacted`: what that changes and why); the attacks' own modules hold the
  semantics as pure functions.
- The state file (`state_path`) keeps flags, adversarial images and labels after every chunk, written
  atomically; an interrupted evaluation resumes at the chunk where it stopped (the official state
  keeps flags only, per attack).
"""

import io
import json
import time
from typing import Callable, Dict, Optional, Sequence

import jax
import numpy as np

from rpat_jax.cpu import chunks
from rpat_jax.cpu import convs
from rpat_jax.sharding import parallel
from rpat_jax.run import paths
from rpat_jax.autoattack import checks, compacted

VERSIONS = {
    'standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
    'plus': ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t'),
}
ATTACKS = ('apgd-ce', 'apgd-dlr', 'apgd-t', 'fab-t', 'square', 'fab')  # The index keys each attack's randomness.
# The official AutoAttack constructor's settings, which version='custom' runs with ...
DEFAULT_OPTIONS = {
    'apgd-ce': {'n_iter': 100, 'n_restarts': 5, 'rho': 0.75},
    'apgd-dlr': {'n_iter': 100, 'n_restarts': 5, 'rho': 0.75},
    'apgd-t': {'n_iter': 100, 'n_restarts': 1, 'rho': 0.75, 'n_target_classes': 9},
    'fab': {'n_iter': 100, 'n_restarts': 5, 'alpha_max': 0.1, 'eta': 1.05, 'beta': 0.9},
    'fab-t': {'n_iter': 100, 'n_target_classes': 9, 'alpha_max': 0.1, 'eta': 1.05, 'beta': 0.9},
    'square': {'n_queries': 5000, 'p_init': 0.8},
}
# ... and what each version changes (the official `_set_version`, Linf and L2).
VERSION_OPTIONS = {
    'standard': {'apgd-ce': {'n_restarts': 1}},
    'plus': {},
    'custom': {},
}
NOT_PORTED = {
    'rand': "version 'rand' needs EOT over a randomised model; a JAX logits function is deterministic "
            "(use version='custom' with apgd-ce,apgd-dlr for a deterministic model)",
}


def canonical_norm(norm: str) -> str:
  names = {'linf': 'Linf', 'l2': 'L2'}
  if norm.lower() not in names:
    raise ValueError(f'norm={norm!r}; allowed: Linf, L2')
  return names[norm.lower()]


def resolve_attacks(version: str, attacks: Optional[Sequence[str]]) -> tuple:
  """The attack list for a version; `attacks` only with version 'custom' (as the official code)."""
  if version in NOT_PORTED:
    raise ValueError(NOT_PORTED[version])
  if version == 'custom':
    if not attacks:
      raise ValueError("version='custom' needs attacks, e.g. ['apgd-ce', 'apgd-t']")
    for name in attacks:
      if name not in ATTACKS:
        raise ValueError(NOT_PORTED.get(name, f'attack {name!r}; allowed: {", ".join(ATTACKS)}'))
    return tuple(attacks)
  if version not in VERSIONS:
    raise ValueError(f'version={version!r}; allowed: standard, plus, custom')
  if attacks:
    raise ValueError(f"attacks are set by version={version!r}; use version='custom' to choose them")
  return VERSIONS[version]


def resolve_options(version: str, names: Sequence[str], overrides: Optional[Dict[str, Dict]] = None) -> Dict:
  """Each attack's hyperparameters: the official defaults, the version's changes, then `overrides`."""
  options = {name: {**DEFAULT_OPTIONS[name], **VERSION_OPTIONS[version].get(name, {})} for name in names}
  for name, changes in (overrides or {}).items():
    if name not in options:
      raise ValueError(f'attack_options for {name!r}, which does not run; running: {", ".join(names)}')
    unknown = set(changes) - set(DEFAULT_OPTIONS[name])
    if unknown:
      raise ValueError(f'{name} options {sorted(unknown)}; allowed: {", ".join(DEFAULT_OPTIONS[name])}')
    options[name].update(changes)
  return options


def make_attack(name: str, logits_fn: Callable, *, norm: str, eps: float, seed: int, options: Dict,
                gradient_logits_fn: Optional[Callable] = None):
  """attack(engine, x, y, indices, clean=None) -> (x_adv, zero_gradient_points) for one attack of the
  ensemble, on host arrays of a chunk (clean: its clean logits, else one forward pass); driven from the
  host over the points still robust (`compacted`). Point i's randomness comes from
  fold_in(fold_in(seed, attack), indices[i]).

  gradient_logits_fn: the same function in the form APGD and FAB take gradients through (on a lone CPU
  device, in chunks of images: `cpu.chunks`); None: logits_fn."""
  key = jax.random.fold_in(jax.random.key(seed), ATTACKS.index(name))
  if gradient_logits_fn is None:
    gradient_logits_fn = logits_fn
  if name.startswith('apgd'):
    loss = {'apgd-ce': 'ce', 'apgd-dlr': 'dlr', 'apgd-t': 'dlr-targeted'}[name]
    return compacted.make_apgd(gradient_logits_fn, key, norm=norm, eps=eps, loss=loss, **options)
  if name in ('fab', 'fab-t'):
    return compacted.make_fab(gradient_logits_fn, key, norm=norm, eps=eps, targeted=name == 'fab-t', **options)
  return compacted.make_square(logits_fn, key, norm=norm, eps=eps, **options)


def _chunks(indices: np.ndarray, batch_size: int):
  for start in range(0, len(indices), batch_size):
    yield start // batch_size, indices[start:start + batch_size]


def _perturbation_norm(delta: np.ndarray, norm: str) -> np.ndarray:
  flat = delta.reshape(len(delta), -1)
  return np.abs(flat).max(1) if norm == 'Linf' else np.sqrt((flat.astype(np.float64) ** 2).sum(1))


class _State:
  """Everything needed to resume, saved as one .npz written atomically (`paths.write_atomic`).

  The file records the settings and `binding` (the caller's digest of the attacked weights) it was
  written for: a file written for anything else, or one that cannot be read, is reported in one line and
  the evaluation starts afresh (it is overwritten at the first save), so a result never mixes two models.
  """

  def __init__(self, path: Optional[str], meta: Dict, x: np.ndarray, clean_pred: np.ndarray, y: np.ndarray,
               log: Callable[[str], None]):
    self.path, self.meta = path, meta
    self._fresh(x, clean_pred, y)
    if path and paths.as_path(path).exists():
      try:
        self._load(log)
      except Exception as error:  # pylint: disable=broad-except  # Truncated zip, missing key, bad JSON...
        reason = (str(error).strip().splitlines() or [''])[0]
        log(f'AutoAttack state {path} cannot be read ({type(error).__name__}: {reason}); starting afresh')
        self._fresh(x, clean_pred, y)

  def _fresh(self, x, clean_pred, y):
    self.robust = clean_pred == y
    self.x_adv, self.y_adv = x.copy(), clean_pred.copy()
    self.attack_position, self.chunk_position = 0, 0
    self.start_robust = self.robust.copy()
    self.per_attack: Dict[str, float] = {}
    self.evaluations: Dict[str, Dict[str, int]] = {}
    self.zero_gradient_points, self.seconds = 0, 0.0

  def add_evaluations(self, what: str, counts: Dict[str, int]):
    """Adds images through the network (forward, backward) to `what`'s count."""
    mine = self.evaluations.setdefault(what, {'forward': 0, 'backward': 0})
    for kind in mine:
      mine[kind] += int(counts[kind])

  def evaluation_summary(self, n_points: int) -> Dict:
    """Images through the network: per part, in all, and per point evaluated."""
    total = {kind: sum(part[kind] for part in self.evaluations.values()) for kind in ('forward', 'backward')}
    return {'per_part': {what: dict(part) for what, part in self.evaluations.items()}, 'total': total,
            'per_point': {kind: count / max(n_points, 1) for kind, count in total.items()}}

  def _load(self, log):
    with np.load(io.BytesIO(paths.as_path(self.path).read_bytes()), allow_pickle=False) as saved:
      saved_meta = json.loads(str(saved['meta']))
      if saved_meta != self.meta:
        changed = sorted(k for k in set(saved_meta) | set(self.meta) if saved_meta.get(k) != self.meta.get(k))
        changed = [{'binding': 'weights'}.get(key, key) for key in changed]
        log(f'AutoAttack state {self.path} was written for other {", ".join(changed)}; starting afresh')
        return
      robust, x_adv, y_adv = saved['robust'], saved['x_adv'], saved['y_adv']
      start_robust = saved['start_robust']
      attack_position, chunk_position = int(saved['attack_position']), int(saved['chunk_position'])
      per_attack = json.loads(str(saved['per_attack']))
      evaluations = json.loads(str(saved['evaluations'])) if 'evaluations' in saved.files else {}
      zero_gradient_points, seconds = int(saved['zero_gradient_points']), float(saved['seconds'])
    if robust.shape != self.robust.shape or x_adv.shape != self.x_adv.shape:
      raise ValueError(f'arrays of shape {robust.shape}, {x_adv.shape} for {self.robust.shape}, {self.x_adv.shape}')
    self.robust, self.x_adv, self.y_adv, self.start_robust = robust, x_adv, y_adv, start_robust
    self.attack_position, self.chunk_position, self.per_attack = attack_position, chunk_position, per_attack
    self.evaluations = evaluations
    self.zero_gradient_points, self.seconds = zero_gradient_points, seconds

  def save(self):
    if not self.path or jax.process_index() != 0:  # One writer; every process resumes from the file.
      return
    buffer = io.BytesIO()
    np.savez(buffer, meta=json.dumps(self.meta), robust=self.robust, x_adv=self.x_adv, y_adv=self.y_adv,
             start_robust=self.start_robust, attack_position=self.attack_position,
             chunk_position=self.chunk_position, per_attack=json.dumps(self.per_attack),
             evaluations=json.dumps(self.evaluations),
             zero_gradient_points=self.zero_gradient_points, seconds=self.seconds)
    path = paths.as_path(self.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(path, buffer.getvalue())


def attack_setup(logits_fn: Callable, batch_size: int):
  """(logits_fn in its attack form, the engine, the form gradients go through): what every attack of an
  evaluation runs on. On a CPU the convolutions take XLA:CPU's fast forms (`cpu.convs`) and a light
  network's gradients go in chunks (`cpu.chunks`); chunks of points are split over every device of every
  process, results coming back replicated to each."""
  logits_fn = convs.for_attacks(logits_fn)
  engine = compacted.Engine(logits_fn, parallel.make_mesh(), batch_size)
  return logits_fn, engine, chunks.for_gradients(logits_fn, engine.devices)


def evaluate(logits_fn: Callable, x, y, *, norm: str = 'Linf', eps: float = 8 / 255, version: str = 'standard',
             seed: int = 0, batch_size: int = 500, attacks: Optional[Sequence[str]] = None,
             attack_options: Optional[Dict[str, Dict]] = None, state_path: Optional[str] = None,
             state_binding: Optional[str] = None, log: Callable[[str], None] = lambda message: None) -> Dict:
  """Standard AutoAttack (or a custom list) on `logits_fn` at (x, y).

  Args:
    logits_fn: x [B, H, W, C] float32 in [0, 1] -> logits [B, K]; pure (BatchNorm in eval mode).
    x: [N, H, W, C] images in [0, 1]; y: [N] int labels (numpy or JAX arrays).
    version: 'standard', 'plus' or 'custom' (then `attacks` lists them: apgd-ce, apgd-dlr, apgd-t,
      fab, fab-t, square), with the official hyperparameters of each (DEFAULT_OPTIONS, VERSION_OPTIONS).
    attack_options: per-attack overrides, e.g. {'square': {'n_queries': 1000}}.
    state_path: an .npz to save progress to after every chunk and resume from.
    state_binding: what else the state file must have been written for, e.g. a digest of the weights; a
      file written for other settings or another binding is not resumed.

  Returns a dict: robust [N] bool, x_adv (adversarial where fooled, clean elsewhere), y_adv (the
  prediction on x_adv), clean_acc, robust_acc, per_attack (robust accuracy after each attack),
  seconds, flags (the sanity checks), max_perturbation, nan_count.
  """
  norm = canonical_norm(norm)
  names = resolve_attacks(version, attacks)
  options = resolve_options(version, names, attack_options)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  if x.ndim != 4 or len(x) != len(y) or x.min() < 0 or x.max() > 1:
    raise ValueError(f'x must be [N, H, W, C] in [0, 1] with one label each; got {x.shape}, {y.shape}')
  started = time.time()
  logits_fn, engine, gradient_logits_fn = attack_setup(logits_fn, batch_size)

  clean_logits = engine.logits(x)  # One pass: clean accuracy, the checks and every attack's clean logits.
  clean_prediction = clean_logits.argmax(1).astype(np.int32)
  num_classes = int(clean_logits.shape[1])
  flags = {'randomized': checks.randomized(),
           'range_output': checks.range_output(clean_logits),
           'dynamic': checks.dynamic(),
           'n_classes': checks.n_classes(num_classes, names, options.get('apgd-t', {}).get('n_target_classes', 9),
                                         options.get('fab-t', {}).get('n_target_classes', 9))}
  meta = {'norm': norm, 'eps': float(eps), 'seed': int(seed), 'attacks': list(names), 'options': options,
          'n_examples': int(len(x)), 'batch_size': int(batch_size), 'binding': state_binding}
  state = _State(state_path, meta, x, clean_prediction, y, log)
  state.add_evaluations('clean and checks', engine.counts)
  clean_acc = float((clean_prediction == y).mean())
  log(f'clean accuracy: {clean_acc:.2%}')
  seconds_before = state.seconds
  for position in range(state.attack_position, len(names)):
    name = names[position]
    if state.chunk_position == 0:
      state.start_robust = state.robust.copy()
    targets = np.nonzero(state.start_robust)[0]
    attack = make_attack(name, logits_fn, norm=norm, eps=eps, seed=seed, options=options[name],
                         gradient_logits_fn=gradient_logits_fn)
    attack_started = time.time()
    for chunk_index, chunk in _chunks(targets, batch_size):
      if chunk_index < state.chunk_position:
        continue
      engine.counts = {'forward': 0, 'backward': 0}
      x_found, zero_points = attack(engine, x[chunk], y[chunk], chunk, clean_logits[chunk])
      predicted = engine.predict(x_found)
      state.add_evaluations(name, engine.counts)
      fooled = predicted != y[chunk]
      state.robust[chunk[fooled]] = False
      state.x_adv[chunk[fooled]], state.y_adv[chunk[fooled]] = x_found[fooled], predicted[fooled]
      state.zero_gradient_points = max(state.zero_gradient_points, int(zero_points))
      state.chunk_position = chunk_index + 1
      state.seconds = seconds_before + time.time() - started
      state.save()
    state.per_attack[name] = float(state.robust.mean())
    state.attack_position, state.chunk_position = position + 1, 0
    state.save()
    log(f'robust accuracy after {name}: {state.per_attack[name]:.2%} ({time.time() - attack_started:.1f} s)')
    if not state.robust.any():
      for rest in names[position + 1:]:
        state.per_attack[rest] = 0.0
      break
  flags['zero_gradients'] = checks.zero_gradients(state.zero_gradient_points)
  flags['square_success'] = checks.square_success(state.per_attack, clean_acc)
  perturbation = _perturbation_norm(state.x_adv - x, norm)
  result = {'robust': state.robust, 'x_adv': state.x_adv, 'y_adv': state.y_adv, 'clean_acc': clean_acc,
            'robust_acc': float(state.robust.mean()), 'per_attack': dict(state.per_attack),
            'seconds': seconds_before + time.time() - started, 'flags': flags,
            'max_perturbation': float(perturbation.max()), 'nan_count': int(np.isnan(state.x_adv).sum()),
            'evaluations': state.evaluation_summary(len(x))}
  log(f'robust accuracy: {result["robust_acc"]:.2%}; max {norm} perturbation {result["max_perturbation"]:.5f}, '
      f'nan {result["nan_count"]}, x_adv in [{state.x_adv.min():.3f}, {state.x_adv.max():.3f}]')
  return result
