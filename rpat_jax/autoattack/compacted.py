"""The ensemble's attacks as loops driven from the host over the points still robust, in bucketed shapes.

The attack modules (`apgd`, `fab`, `square`) hold the semantics, each as a pure function with `lax`
loops (what the tests check against the official code) built from one-iteration functions. This module
runs the same iteration functions in another way, for speed:
- **From the host.** Each APGD or FAB iteration is one call of a jitted step; Square's queries,
  forward passes only, run in `lax` blocks of `check_every`. The host queues calls without waiting and
  reads a small flag only every `check_every` iterations. On XLA:CPU a network's input gradient
  inside a `lax` loop body ran far slower than the same gradient compiled on its own, whatever the flags
  (docs/benchmarks.md); forward-only loop bodies did not slow down. On a GPU calls are asynchronous, so a step costs its kernels plus
  microseconds of dispatch, and a read every few iterations only drains the queue briefly.
- **Only the points that matter.** A run attacks the points still robust, not a masked chunk. Within
  a run, every `check_every` iterations, the points already fooled leave whenever the rest fit a
  smaller bucket. Bucket sizes grow geometrically (and are multiples of the device count), so each step
  compiles O(log batch_size) times (`bucket_size`); the padding repeats the last point and its copies
  are dropped.

What leaving a run early changes: a fooled point keeps the adversarial found so far (APGD: a
misclassified iterate; FAB: an adversarial iterate within eps; Square: one with margin <= 0), where the
official code keeps iterating on it and may return a later one. Whether a point is fooled, which is all
robust accuracy counts, does not change: each point's iterations depend on that point alone (BatchNorm
is in eval mode).

Each attack takes the chunk's clean logits (`clean`, [n, K]) from the caller, which has them from its clean
pass (the ensemble's), or makes one forward pass for them.

`Engine` also counts the images that go through the network, forward and backward, the measure of work
the benchmark compares with the official code's.
"""

import functools
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from rpat_jax.cpu import hoisted_jit
from rpat_jax.sharding import parallel
from rpat_jax.attacks import point_keys
from rpat_jax.autoattack import apgd, fab, square

CHECK_EVERY = {'apgd': 10, 'fab': 10, 'square': 20}  # Iterations between reads of who is still robust.


def bucket_size(count: int, batch_size: int, multiple: int = 1) -> int:
  """The shape that `count` points run in: count rounded up to an eighth of its power of two (at least 8),
  and to `multiple` (the device count); at most batch_size rounded up to `multiple`.

  The sizes are 8, 16, ..., 64, 72, 80, ..., 128, 144, ...: at most 8 per doubling, so a step compiles
  O(log batch_size) times, and the padding is under an eighth of the points (7 below 64).
  """
  round_up = lambda value, step: -(-value // step) * step
  power = 1 << (max(count, 1).bit_length() - 1)
  step = round_up(max(8, power // 8), multiple)
  return min(round_up(batch_size, multiple), round_up(max(count, 1), step))


class Engine:
  """The mesh, the bucket sizes, the compiled forward pass and the count of images through the network.

  counts: {'forward': images through a forward pass, 'backward': images through a backward pass}, every
  padded copy included (it is computed).
  """

  def __init__(self, logits_fn: Callable, mesh, batch_size: int):
    self.mesh, self.batch_size, self.devices = mesh, batch_size, mesh.size
    self.counts = {'forward': 0, 'backward': 0}
    self._logits = hoisted_jit.jit(logits_fn, out_shardings=parallel.replicated(mesh))
    self._replicate = jax.jit(lambda tree: tree, out_shardings=parallel.replicated(mesh))

  def bucket(self, count: int) -> int:
    return bucket_size(count, self.batch_size, self.devices)

  def pad(self, rows: np.ndarray) -> np.ndarray:
    """rows, the last one repeated up to the bucket of len(rows)."""
    size = self.bucket(len(rows))
    return np.concatenate([rows, np.full(size - len(rows), rows[-1])]) if len(rows) < size else rows

  def count(self, images: int, forward: int = 0, backward: int = 0):
    self.counts['forward'] += images * forward
    self.counts['backward'] += images * backward

  def put(self, tree):
    """Host arrays -> arrays split over the mesh along the batch axis."""
    return jax.tree.map(lambda value: parallel.host_batch(value, self.mesh), tree)

  def read(self, tree):
    """Device arrays -> host arrays, whole on every process."""
    return jax.tree.map(np.asarray, self._replicate(tree))

  def logits(self, images: np.ndarray) -> np.ndarray:
    """Logits of host images, in chunks of at most batch_size, each padded to its bucket."""
    out = []
    for start in range(0, len(images), self.batch_size):
      rows = np.arange(start, min(start + self.batch_size, len(images)))
      padded = self.pad(rows)
      self.count(len(padded), forward=1)
      out.append(np.asarray(self._logits(self.put(images[padded])))[:len(rows)])
    return np.concatenate(out)

  def predict(self, images: np.ndarray) -> np.ndarray:
    return self.logits(images).argmax(1).astype(np.int32)


class Group:
  """Points of a chunk attacked together: `rows` (their positions in the chunk) and, on the devices,
  `consts` (their per-point inputs) and `carry` (their per-point state), padded to a bucket."""

  def __init__(self, engine: Engine, rows: np.ndarray, consts: Dict[str, np.ndarray]):
    self.engine, self.rows, self._host_consts = engine, np.asarray(rows), consts
    self.carry = None
    self._place()

  @classmethod
  def of_robust(cls, engine: Engine, robust: np.ndarray, x, y, indices, targets=None):
    """The points `robust` of a chunk with their images, labels, indices (and targets); None if none."""
    rows = np.nonzero(robust)[0]
    if not len(rows):
      return None
    consts = {'x': x, 'y': y, 'index': indices.astype(np.int32)}
    if targets is not None:
      consts['target'] = np.asarray(targets).astype(np.int32)
    return cls(engine, rows, consts)

  def _place(self):
    padded = self.engine.pad(self.rows)
    self.size = len(padded)
    self.consts = self.engine.put({name: value[padded] for name, value in self._host_consts.items()})

  def can_shrink(self, keep: np.ndarray) -> bool:
    """Whether the points `keep` ([len(rows)] bool) fit a smaller bucket."""
    return 0 < keep.sum() and self.engine.bucket(int(keep.sum())) < self.size

  def shrink(self, keep: np.ndarray, carry_host):
    """Keeps only the points `keep`, with their state from carry_host (this group's carry, on the host)."""
    positions = self.engine.pad(np.nonzero(keep)[0])
    self.rows = self.rows[keep]
    self._place()
    self.carry = self.engine.put(jax.tree.map(lambda value: value[positions], carry_host))


def apgd_step(logits_fn: Callable, *, norm: str, eps: float, loss: str, n_iter: int, rho: float) -> Callable:
  """`step(consts, carry, i, x_start) -> carry`: one APGD iteration of a group, or its start (i = -1, from
  x_start). A run's start and its iterations are one program: each bucket size compiles one gradient program,
  not two (each of ResNet-18's took seconds to compile; docs/benchmarks_log.md)."""
  def step(consts, carry, i, x_start):
    x, y, targets = consts['x'], consts['y'], consts.get('target')
    x_next = jax.lax.cond(i < 0, lambda: x_start, lambda: apgd.propose(x, carry, i, norm=norm, eps=eps))
    found = apgd.loss_and_grad(logits_fn, loss, y, targets, x_next)
    return jax.lax.cond(i < 0, lambda: apgd.start_carry(x_next, *found, eps=eps),
                        lambda: apgd.update(carry, x_next, *found, i, n_iter=n_iter, rho=rho))
  return step


def make_apgd(logits_fn: Callable, key: jax.Array, *, norm: str, eps: float, loss: str, n_iter: int = 100,
              n_restarts: int = 1, n_target_classes: int = 9, rho: float = 0.75,
              check_every: int = CHECK_EVERY['apgd']):
  """APGD as `apgd.apgd` runs it (runs = restarts, times targets for APGD-T), from the host.

  Returns attack(engine, x, y, indices, clean=None) -> (x_adv, zero_gradient_points) on host arrays: x_adv
  is the adversarial where fooled, x elsewhere. Point i's random start is drawn from fold_in(key, indices[i]).
  """
  targeted = loss == 'dlr-targeted'
  runs = n_restarts * (n_target_classes if targeted else 1)

  # The random starts are a program of their own, compiled on a CPU with little optimisation: threefry's
  # code compiles several times faster so, and runs once per run (docs/benchmarks.md).
  @functools.partial(jax.jit, compiler_options=hoisted_jit.run_once_options())
  def start_points(consts, run):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, run))(point_keys(key, consts['index']))
    x = consts['x']
    return apgd.start_point(x, apgd.draw_noise(keys, x.shape[1:], norm=norm), norm=norm, eps=eps)

  step = hoisted_jit.jit(apgd_step(logits_fn, norm=norm, eps=eps, loss=loss, n_iter=n_iter, rho=rho))

  def attack(engine: Engine, x: np.ndarray, y: np.ndarray, indices: np.ndarray, clean=None):
    clean = engine.logits(x) if clean is None else clean
    num_classes = clean.shape[1]
    if targeted and num_classes < n_target_classes + 1:
      raise ValueError(f'n_target_classes={n_target_classes} needs at least {n_target_classes + 1} classes, '
                       f'the model has {num_classes}')
    robust = clean.argmax(1) == y
    ranked = np.argsort(clean, axis=1, kind='stable')  # Ascending, as apgd.apgd's.
    x_adv, zero_points = x.copy(), 0

    def harvest(group, fooled, x_found):
      rows = group.rows[fooled]
      x_adv[rows], robust[rows] = x_found[:len(group.rows)][fooled], False

    for run in range(runs):
      rank = apgd.target_rank(run, num_classes=num_classes, n_restarts=n_restarts)
      group = Group.of_robust(engine, robust, x, y, indices, ranked[:, rank] if targeted else None)
      if group is None:
        break
      blank = jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), apgd.carry_shapes((group.size,) + x.shape[1:]))
      # The start: the carry's values are unused. The iterations pass x for x_start, unused.
      group.carry = step(group.consts, engine.put(blank), -1, start_points(group.consts, run))
      engine.count(group.size, forward=1, backward=1)
      if loss != 'ce':
        zero_points = max(zero_points, int(engine.read(group.carry['zero_grad'])[:len(group.rows)].sum()))
      for i in range(n_iter):
        group.carry = step(group.consts, group.carry, i, group.consts['x'])
        engine.count(group.size, forward=1, backward=1)
        if (i + 1) % check_every or i + 1 == n_iter:
          continue
        correct = engine.read(group.carry['correct'])[:len(group.rows)]
        if not correct.all() and (not correct.any() or group.can_shrink(correct)):
          host = engine.read(group.carry)
          harvest(group, ~correct, host['x_best_adv'])
          if not correct.any():
            group = None
            break
          group.shrink(correct, host)
      if group is not None:
        host = engine.read({'correct': group.carry['correct'], 'x_best_adv': group.carry['x_best_adv']})
        harvest(group, ~host['correct'][:len(group.rows)], host['x_best_adv'])
    return x_adv, zero_points

  return attack


def make_fab(logits_fn: Callable, key: jax.Array, *, norm: str, eps: float, targeted: bool, n_iter: int = 100,
             n_target_classes: int = 9, n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
             beta: float = 0.9, check_every: int = CHECK_EVERY['fab']):
  """FAB-T (`targeted`, as `fab.fab_targeted`) or untargeted FAB (as `fab.fab_untargeted`) from the host.

  Returns attack(engine, x, y, indices, clean=None) -> (x_adv, 0). A run's points leave it early once an
  adversarial iterate within eps is found (the official code goes on, looking for a smaller one); as in the
  official `perturb`, a fresh forward pass then accepts a point iff argmax != y and its norm is <= eps.
  """
  project, norm_of = fab.THREATS[norm]
  eps32 = np.float32(eps)
  options = dict(project=project, norm_of=norm_of, alpha_max=alpha_max, eta=eta, beta=beta)
  runs = n_target_classes if targeted else n_restarts

  def flat_problem(consts):
    x = consts['x']
    return x.reshape(x.shape[0], -1), lambda v: logits_fn(v.reshape(x.shape))

  @hoisted_jit.jit
  def start(consts, run):
    x0, _ = flat_problem(consts)
    if targeted or n_restarts == 1:
      x1 = x0
    else:
      keys = jax.vmap(lambda k: jax.random.fold_in(k, run))(point_keys(key, consts['index']))
      noise = apgd.draw_noise(keys, x0.shape[1:], norm=norm)
      x1 = jnp.where(run > 0, fab.random_start(x0, noise, norm_of, eps32), x0)
    return {'x1': x1, 'adv': x0, 'best': jnp.full(x0.shape[:1], jnp.inf, jnp.float32)}

  # The linearisation and the rest of a step are two programs: on XLA:CPU one program holding both the
  # gradient and the forward pass ran slower than the two (docs/benchmarks.md).
  @hoisted_jit.jit
  def linearise(consts, carry):
    x0, flat_logits = flat_problem(consts)
    y = consts['y']
    fn = (fab.target_linearisation(flat_logits, y, consts['target']) if targeted else
          fab.closest_class_linearisation(flat_logits, y, fab.DUAL_NORMS[norm]))
    return fn(carry['x1'])

  @hoisted_jit.jit
  def move(consts, carry, f, grad):
    x0, flat_logits = flat_problem(consts)
    x1, adv, best = fab.fab_move(flat_logits, x0, consts['y'], (carry['x1'], carry['adv'], carry['best']), f,
                                 grad, **options)
    return {'x1': x1, 'adv': adv, 'best': best}

  def iterate(consts, carry):
    return move(consts, carry, *linearise(consts, carry))

  def attack(engine: Engine, x: np.ndarray, y: np.ndarray, indices: np.ndarray, clean=None):
    clean = engine.logits(x) if clean is None else clean
    num_classes = clean.shape[1]
    if targeted and num_classes < n_target_classes + 1:
      raise ValueError(f'{num_classes} classes cannot give {n_target_classes} targets')
    robust = clean.argmax(1) == y
    # Column j - 2 holds the j-th largest clean logit's class (ties to the lower index, as lax.top_k).
    by_rank = np.argsort(-clean, axis=1, kind='stable')[:, 1:n_target_classes + 1]
    flat_x = x.reshape(len(x), -1)
    x_adv = x.copy()
    backward = 1 if targeted else num_classes  # Untargeted FAB linearises every class: K backward passes.
    for run in range(runs):
      group = Group.of_robust(engine, robust, x, y, indices, by_rank[:, run] if targeted else None)
      if group is None:
        break
      group.carry = start(group.consts, run)
      found = {}  # Chunk position -> the adversarial that made the point leave (norm <= eps).

      def harvest(host, leaving):
        for position, row in zip(np.nonzero(leaving)[0], group.rows[leaving]):
          found[row] = host['adv'][position]

      for i in range(n_iter):
        group.carry = iterate(group.consts, group.carry)
        engine.count(group.size, forward=2, backward=backward)
        if (i + 1) % check_every or i + 1 == n_iter:
          continue
        done = engine.read(group.carry['best'])[:len(group.rows)] <= eps32
        if done.any() and (done.all() or group.can_shrink(~done)):
          host = engine.read(group.carry)
          harvest(host, done)
          if done.all():
            group = None
            break
          group.shrink(~done, host)
      if group is not None:
        host = engine.read(group.carry)
        harvest(host, np.isfinite(host['best'][:len(group.rows)]))
      if not found:
        continue
      candidates_rows = np.array(sorted(found))
      candidates = np.stack([found[row] for row in candidates_rows])
      accepted = ((engine.predict(candidates.reshape((-1,) + x.shape[1:])) != y[candidates_rows])
                  & (_norms(candidates - flat_x[candidates_rows], norm) <= eps32))
      x_adv[candidates_rows[accepted]] = candidates[accepted].reshape((-1,) + x.shape[1:])
      robust[candidates_rows[accepted]] = False
    return x_adv, 0

  return attack


def _norms(delta: np.ndarray, norm: str) -> np.ndarray:
  """float32 Linf or L2 norms of the rows of delta [n, D], as fab's norm functions compute them."""
  return np.asarray(fab.THREATS[norm][1](jnp.asarray(delta, jnp.float32)))


def make_square(logits_fn: Callable, key: jax.Array, *, norm: str, eps: float, n_queries: int = 5000,
                p_init: float = 0.8, check_every: int = CHECK_EVERY['square']):
  """Square as `square.square_attack` runs it, from the host; the points whose margin is <= 0 leave.

  Returns attack(engine, x, y, indices, clean=None) -> (x_adv, 0): x_adv is the lowest-margin image where it
  is misclassified, x elsewhere. Point i's draws come from fold_in(key, indices[i]).
  """
  @hoisted_jit.jit
  def start(consts):
    start_keys, _ = square.split_keys(point_keys(key, consts['index']))
    everyone = jnp.ones(consts['y'].shape, bool)  # A group holds clean-correct points only.
    _, x_best, margin_best, _ = square.square_start(logits_fn, consts['x'], consts['y'], start_keys, everyone,
                                                    jnp.zeros(consts['y'].shape), norm=norm, eps=eps)
    return {'x_best': x_best, 'margin': margin_best}

  # Square's queries are forward passes only, and those ran faster as a `lax` loop than called one by one
  # on XLA:CPU (docs/benchmarks.md): the host calls blocks of
  # `check_every` queries, and compacts between blocks.
  @hoisted_jit.jit(static_argnames=('length',))
  def block(consts, carry, first, length):
    _, loop_keys = square.split_keys(point_keys(key, consts['index']))
    everyone = jnp.ones(consts['y'].shape, bool)  # A group holds clean-correct points only.

    def query(j, state):
      return square.square_step(logits_fn, consts['x'], consts['y'], loop_keys, everyone, state, norm=norm,
                                eps=eps, n_queries=n_queries, p_init=p_init)
    state = (first, carry['x_best'], carry['margin'], jnp.zeros(consts['y'].shape, jnp.int32))
    _, x_best, margin_best, _ = jax.lax.fori_loop(0, length, query, state)
    return {'x_best': x_best, 'margin': margin_best}

  def attack(engine: Engine, x: np.ndarray, y: np.ndarray, indices: np.ndarray, clean=None):
    x_adv = x.copy()
    clean = engine.logits(x) if clean is None else clean
    group = Group.of_robust(engine, clean.argmax(1) == y, x, y, indices)
    if group is None:
      return x_adv, 0
    group.carry = start(group.consts)
    engine.count(group.size, forward=1)

    def harvest(host, leaving):
      x_adv[group.rows[leaving]] = host['x_best'][:len(group.rows)][leaving]

    done = 0
    while True:  # Checks after the start point (it may already be misclassified) and after each block.
      fooled = engine.read(group.carry['margin'])[:len(group.rows)] <= 0
      if fooled.all() or done == n_queries or (fooled.any() and group.can_shrink(~fooled)):
        host = engine.read(group.carry)
        harvest(host, fooled)
        if fooled.all() or done == n_queries:
          break
        group.shrink(~fooled, host)
      length = min(check_every, n_queries - done)
      group.carry = block(group.consts, group.carry, np.int32(done), length=length)
      engine.count(group.size * length, forward=1)
      done += length
    return x_adv, 0

  return attack

