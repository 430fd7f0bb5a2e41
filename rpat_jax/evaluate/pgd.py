"""Per-point PGD-k robustness of host points, in batches split over the mesh: the evaluation's PGD-20 and
CW-20 and the benchmark's PGD-20 all run this attack (its start, steps and final check compiled once each)."""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rpat_jax import attacks
from rpat_jax.cpu import chunks
from rpat_jax.cpu import convs
from rpat_jax.cpu import hoisted_jit
from rpat_jax.sharding import parallel
from rpat_jax.autoattack import losses

LOSSES = {'ce': attacks.cross_entropy_sum, 'cw': losses.cw_loss_sum}


class PgdPrograms(NamedTuple):
  """The programs of a PGD-k evaluation: the random start, one step, the final check."""
  mesh: Any
  start: Callable  # (xb, first) -> delta
  step: Callable  # (xb, yb, delta, loss=) -> delta
  still_correct: Callable  # (xb, yb, delta) -> bool [B], replicated


def pgd_programs(logits_fn: Callable, attack_config, *, seed: int) -> PgdPrograms:
  """The jitted programs `make_robustness` calls (also what `aot` compiles for a target)."""
  key = jax.random.key(seed)
  norm, eps, step_size = attack_config.norm, attack_config.eps, attack_config.step_size
  mesh = parallel.make_mesh()
  logits_fn = convs.for_attacks(logits_fn)  # On a CPU: convolutions in XLA:CPU's fast forms.
  gradient_logits_fn = chunks.for_gradients(logits_fn, mesh.size)

  @jax.jit
  def start(xb, first):
    return attacks.random_start(attacks.point_keys(key, first + jnp.arange(xb.shape[0])), xb, norm=norm, eps=eps)

  @hoisted_jit.jit(static_argnames=('loss',))
  def step(xb, yb, delta, loss):
    return attacks.pgd_step(gradient_logits_fn, xb, yb, delta, norm=norm, eps=eps, step_size=step_size,
                            loss_fn=LOSSES[loss])

  @hoisted_jit.jit(out_shardings=parallel.replicated(mesh))
  def still_correct(xb, yb, delta):
    return jnp.argmax(logits_fn(jnp.clip(xb + delta, 0.0, 1.0)), -1) == yb

  return PgdPrograms(mesh, start, step, still_correct)


def make_robustness(logits_fn: Callable, attack_config, *, seed: int,
                    steps: int = attacks.EVAL_PGD_STEPS) -> Callable[..., np.ndarray]:
  """Returns `robust(x, y, batch_size, loss='ce') -> bool [N]`: PGD-`steps` with the training threat
  (`attack_config`: norm, eps, step_size) on cross-entropy ('ce') or the CW margin ('cw'), each point
  still classified correctly or not. One compile per loss; each point's random start is keyed by its
  index among the points, so its result does not depend on the batch size.

  batch_size: points per call, split over every device (a multiple of the device count); on a CPU at
    most `chunks.POINTS_PER_DEVICE` per device.
  """
  programs = pgd_programs(logits_fn, attack_config, seed=seed)
  mesh = programs.mesh

  # The steps are called from the host, one program each: on XLA:CPU a gradient inside a `lax` loop body
  # ran far slower than compiled on its own (docs/benchmarks.md); on a GPU the calls queue without a wait.
  def robust_batch(xb, yb, first, loss):
    delta = programs.start(xb, first)
    for _ in range(steps):
      delta = programs.step(xb, yb, delta, loss=loss)
    return programs.still_correct(xb, yb, delta)

  def robust(x, y, batch_size: int, loss: str = 'ce') -> np.ndarray:
    batch_size = chunks.points_per_call(batch_size, mesh.size)
    return parallel.per_point(functools.partial(robust_batch, loss=loss), x, y, batch_size, mesh)

  return robust


def accuracies(logits_fn, x, y, attack_config, *, batch_size: int, seed: int):
  """(clean, PGD-20 (cross-entropy), CW-20 (margin loss)) accuracy with the training threat.

  batch_size: points per call, split over every device (a multiple of the device count).
  """
  mesh = parallel.make_mesh()
  clean = hoisted_jit.jit(lambda xb, yb, start: jnp.argmax(logits_fn(xb), -1) == yb,
                          out_shardings=parallel.replicated(mesh))
  robust = make_robustness(logits_fn, attack_config, seed=seed)
  return (float(parallel.per_point(clean, x, y, batch_size, mesh).mean()),
          float(robust(x, y, batch_size, 'ce').mean()), float(robust(x, y, batch_size, 'cw').mean()))
