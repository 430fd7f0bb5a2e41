"""Adversarial-training methods as data: one declaration per method, one registry.

A `Method` says everything the train step needs to know about a method, and nothing else holds it:
- `attack`: the inner maximisation, `(config, logits_fn, key, x, labels) -> x'`;
- `passes`: the train-mode forwards of the loss in the official order, each a `Pass(name, input)`.
  The order is the hardest fidelity point: every train-mode forward moves the BatchNorm running
  statistics, so the same forwards in another order leave other statistics. `rpat_passes` is the
  order with RPAT (None: the method has no RPAT variant);
- `loss`: `(config, logits, labels) -> (loss, aux)`, `logits` keyed by pass name;
- `views`: augmented views per image (Consistency-AT: 2, a batch of 2B);
- `teacher`: no-gradient forwards of the weight average and the term they feed (ReBAT, RPAT++);
- `post_step_input`: a train-mode forward after the update, whose only effect is on the BN statistics.

Inputs are named: 'clean' (x), 'adv' (x'), 'interp' (x~ = r x + (1-r) x', one per rate: logits
[R, B, K]) and 'shifted' (clip(x + rebat.rate (x' - x)), RPAT++'s teacher input). RPAT is added by the
step, not by the methods: from the logits named 'clean', 'adv' and 'interp', as
lam * rpat(z(x~), z(x), z(x')). A method outside the package is one `register(Method(...))` call away
(tests/methods_test.py defines one).

The official code each built-in method follows is named in `docs/fidelity.md`: [B] = RPAT_Benchmarks,
[S] = RPAT_SOTAs (ReBAT's training script).
"""

import dataclasses
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from rpat_jax import attacks
from rpat_jax import objectives
from rpat_jax.config import errors

INPUTS = ('clean', 'adv', 'interp', 'shifted')
RPAT_NAMES = ('clean', 'adv', 'interp')  # The logits RPAT reads: z(x), z(x'), z(x~).

AttackFn = Callable[[ml_collections.ConfigDict, Callable, jax.Array, jax.Array, jax.Array], jax.Array]
LossFn = Callable[[ml_collections.ConfigDict, Mapping[str, jax.Array], jax.Array],
                  Tuple[jax.Array, Dict[str, jax.Array]]]


class MethodError(ValueError):
  """A method declaration that cannot work; the message names the method and the field."""


class Pass(NamedTuple):
  """One train-mode forward: its logits are `logits[name]` in the loss; `input` is one of INPUTS."""
  name: str
  input: str


@dataclasses.dataclass(frozen=True)
class Teacher:
  """The weight average as a no-gradient teacher ([S]): its forwards of `inputs` (in [S]'s order), and
  `loss(config, teacher_logits: list of [B, K], logits) -> scalar`, added with weight `weight(config)` from
  `ema.start_epoch` on (before, the average is a copy of the online model). A term whose value is not below
  1e10 (inf, NaN) is left out, value and gradient, as [S] leaves it out."""
  inputs: Tuple[str, ...]
  loss: Callable[..., jax.Array]
  weight: Callable[[ml_collections.ConfigDict], float]


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  attack: AttackFn
  passes: Tuple[Pass, ...]
  loss: LossFn
  rpat_passes: Optional[Tuple[Pass, ...]] = None
  views: int = 1
  teacher: Optional[Teacher] = None
  post_step_input: Optional[str] = None
  # passes.fused may run the passes as one forward over the concatenated inputs (shared BN statistics).
  allows_fused_forward: bool = False
  # Extra checks of the method's own config keys: config -> None, raising config.errors.ConfigError.
  validate: Optional[Callable[[ml_collections.ConfigDict], None]] = None

  def passes_for(self, rpat: bool) -> Tuple[Pass, ...]:
    """The train-mode forwards of a step, in order, with RPAT on or off."""
    if rpat and self.rpat_passes is None:
      raise MethodError(f'method {self.name!r} has no RPAT variant')
    return self.rpat_passes if rpat else self.passes

  def forward_order(self, rpat: bool) -> Tuple[str, ...]:
    """The inputs of the train-mode forwards in call order, e.g. ('adv', 'interp', 'clean')."""
    return tuple(p.input for p in self.passes_for(rpat))


_REGISTRY: Dict[str, Method] = {}


def _check(method: Method) -> None:
  where = f'method {method.name!r}'
  if not method.name or not isinstance(method.name, str):
    raise MethodError(f'a method needs a non-empty name, got {method.name!r}')
  for field, passes in (('passes', method.passes), ('rpat_passes', method.rpat_passes)):
    if passes is None:
      continue
    if not passes:
      raise MethodError(f'{where}: {field} is empty; the loss needs at least one train-mode forward')
    names = [p.name for p in passes]
    if len(set(names)) != len(names):
      raise MethodError(f'{where}: {field} repeats a logits name in {names}')
    for p in passes:
      if p.input not in INPUTS:
        raise MethodError(f'{where}: {field} has input {p.input!r}; allowed: {", ".join(INPUTS)}')
    if field == 'rpat_passes' and not {(n, n) for n in RPAT_NAMES} <= set(passes):
      raise MethodError(f'{where}: rpat_passes must include Pass(n, n) for n in {RPAT_NAMES}')
    if field == 'passes' and any(p.input == 'interp' for p in passes):
      raise MethodError(f'{where}: passes (without RPAT) has an interp forward; put it in rpat_passes')
  if not any(p.name == 'adv' for p in method.passes):
    raise MethodError(f"{where}: passes must name one forward 'adv' (the adversarial accuracy is read there)")
  if method.views not in (1, 2):
    raise MethodError(f'{where}: views={method.views}; allowed: 1, 2')
  if method.post_step_input is not None and method.post_step_input not in ('clean', 'adv'):
    raise MethodError(f'{where}: post_step_input={method.post_step_input!r}; allowed: clean, adv, None')
  if method.teacher is not None:
    bad = [name for name in method.teacher.inputs if name not in INPUTS or name == 'interp']
    if not method.teacher.inputs or bad:
      raise MethodError(f'{where}: teacher inputs {method.teacher.inputs}; allowed: clean, adv, shifted')


def register(method: Method, *, replace: bool = False) -> Method:
  """Adds `method` to the registry (config.method = method.name); returns it."""
  _check(method)
  if method.name in _REGISTRY and not replace:
    raise MethodError(f'method {method.name!r} is already registered (pass replace=True to redefine it)')
  _REGISTRY[method.name] = method
  return method


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


def get(name: str) -> Method:
  if name not in _REGISTRY:
    raise MethodError(f'method={name!r} is not allowed; allowed: {", ".join(_REGISTRY)}')
  return _REGISTRY[name]


def names() -> Tuple[str, ...]:
  return tuple(_REGISTRY)


def make_inputs(config: ml_collections.ConfigDict, x: jax.Array, x_adv: jax.Array,
                wanted: Sequence[str]) -> Dict[str, jax.Array]:
  """The named inputs in `wanted`: x and x' [B, H, W, C], x~ [R, B, H, W, C] (one per rpat.rates)."""
  makers = {
      'clean': lambda: x,
      'adv': lambda: x_adv,
      'interp': lambda: objectives.interpolate(x, x_adv, jnp.asarray(config.rpat.rates, jnp.float32)),
      'shifted': lambda: jnp.clip(x + config.rebat.rate * (x_adv - x), 0.0, 1.0),
  }
  return {name: makers[name]() for name in dict.fromkeys(wanted)}


# ------------------------------------------------------------------------------------------ attacks
def _hyper(config):
  attack = config.attack
  return dict(norm=attack.norm, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
              unroll=attack.unroll)


def pgd_ce_attack(config, logits_fn, key, x, labels):
  """[B]'s advertorch PGD on the cross-entropy from a uniform start in the threat set."""
  return attacks.pgd(logits_fn, key, x, labels, random_init=config.attack.random_start, **_hyper(config))


def trades_kl_attack(config, logits_fn, key, x, labels):
  """[B]'s TRADES attack: from x + 0.001 N(0, 1), ascend the KL to the clean prediction."""
  del labels
  clean_logits = jax.lax.stop_gradient(logits_fn(x))
  kl = lambda logits: jnp.sum(objectives.kl_terms(clean_logits, logits))
  return attacks.small_noise_pgd(logits_fn, key, x, kl, **_hyper(config))


def mart_ce_attack(config, logits_fn, key, x, labels):
  """[B]'s MART attack: from x + 0.001 N(0, 1), ascend the cross-entropy."""
  ce = lambda logits: attacks.cross_entropy_sum(logits, labels)
  return attacks.small_noise_pgd(logits_fn, key, x, ce, **_hyper(config))


def no_attack(config, logits_fn, key, x, labels):
  """Standard training: the training input is the clean image (named 'adv' as every method's train input)."""
  del config, logits_fn, key, labels
  return x


def uniform_noise_attack(config, logits_fn, key, x, labels):
  """The paper's noise baseline: clip(x + U(-eps, eps)) per pixel, whatever the norm (no gradient)."""
  del logits_fn, labels
  eps = config.attack.eps
  return jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), 0.0, 1.0)


def sotas_pgd_attack(config, logits_fn, key, x, labels):
  """[S]'s `attack_pgd`: the cross-entropy from a random start in the eps-ball (`attack.random_start`)."""
  return attacks.pgd_sotas(logits_fn, key, x, labels, random_init=config.attack.random_start, **_hyper(config))


# ------------------------------------------------------------------------------------------- losses
def _adversarial_ce_loss(config, logits, labels):
  del config
  ce = objectives.cross_entropy(logits['adv'], labels)
  return ce, {'ce_loss': ce}


def _trades_loss(config, logits, labels):
  total, ce, kl = objectives.trades_loss(logits['clean'], logits['adv'], logits['kl_target'], labels, config.beta)
  return total, {'ce_loss': ce, 'kl_loss': kl}


def _mart_loss(config, logits, labels):
  total, adversarial, robust = objectives.mart_loss(logits['clean'], logits['adv'], labels, config.beta)
  return total, {'ce_loss': objectives.cross_entropy(logits['adv'], labels), 'mart_adv_loss': adversarial,
                 'mart_robust_loss': robust}


def consistency_weight(config) -> float:
  """[B] weights the consistency term with RPAT's --lam; `consistency.lam` separates the two."""
  return config.rpat.lam if config.consistency.lam is None else config.consistency.lam


def _consistency_loss(config, logits, labels):
  ce = objectives.cross_entropy(logits['adv'], labels)
  view_1, view_2 = jnp.split(logits['adv'], 2)
  js = objectives.jensen_shannon(view_1, view_2, config.consistency.temperature)
  return ce + consistency_weight(config) * js, {'ce_loss': ce, 'consistency_loss': js}


def _boat_term(config, teacher_logits, logits):
  del config
  return objectives.boat_kl(teacher_logits[0], logits['adv'])


def _rpat_plus_plus_term(config, teacher_logits, logits):
  return objectives.rpat_plus_plus_kl(teacher_logits[0], teacher_logits[1], logits['adv'], config.rebat.rate)


def _validate_rebat(config):
  errors.require(config.ema.enabled, f'method={config.method} needs the weight average as its teacher; '
                 'allowed: ema.enabled=True')
  errors.require(isinstance(config.rebat.beta, (int, float)) and config.rebat.beta >= 0,
                 f'rebat.beta={config.rebat.beta!r} must be a number >= 0')
  errors.require(isinstance(config.rebat.rate, (int, float)) and 0 < config.rebat.rate < 1,
                 f'rebat.rate={config.rebat.rate!r}; allowed: strictly between 0 and 1')
  errors.choice('rebat.teacher_bn', config.rebat.teacher_bn, ('eval', 'official'))


# ------------------------------------------------------------------------------------ the built-ins
ADV, CLEAN, INTERP = Pass('adv', 'adv'), Pass('clean', 'clean'), Pass('interp', 'interp')

PGD_AT = register(Method(  # [B] adv_train(_ra).py: L = CE(z(x'), y); with RPAT z(x') -> z(x~) -> z(x).
    name='pgd_at', attack=pgd_ce_attack, passes=(ADV,), rpat_passes=(ADV, INTERP, CLEAN),
    loss=_adversarial_ce_loss, allows_fused_forward=True))
TRADES = register(Method(  # [B] adv_trades(_ra).py: z(x) -> z(x') -> z(x) again (the KL target) -> z(x~).
    name='trades', attack=trades_kl_attack, passes=(CLEAN, ADV, Pass('kl_target', 'clean')),
    rpat_passes=(CLEAN, ADV, Pass('kl_target', 'clean'), INTERP), loss=_trades_loss))
MART = register(Method(  # [B] adv_mart(_ra).py: z(x) -> z(x') -> z(x~).
    name='mart', attack=mart_ce_attack, passes=(CLEAN, ADV), rpat_passes=(CLEAN, ADV, INTERP), loss=_mart_loss))
CONSISTENCY = register(Method(  # [B] adv_consistency(_ra).py on 2B views: z(x'2) -> z(x~2) -> z(X2).
    name='consistency', attack=pgd_ce_attack, passes=(ADV,), rpat_passes=(ADV, INTERP, CLEAN),
    loss=_consistency_loss, views=2, allows_fused_forward=True))
REBAT = register(Method(  # [S] train_cifar_wa.py: CE(z(x')) + beta KL(z_wa(x') || z(x')); clean forward after.
    name='rebat', attack=sotas_pgd_attack, passes=(ADV,), loss=_adversarial_ce_loss,
    teacher=Teacher(inputs=('adv',), loss=_boat_term, weight=lambda config: config.rebat.beta),
    post_step_input='clean', validate=_validate_rebat))
RPAT_PLUS_PLUS = register(Method(  # [S] train_cifar_ra.py: the teacher term is the averaged linearity.
    name='rpat_plus_plus', attack=sotas_pgd_attack, passes=(ADV,), loss=_adversarial_ce_loss,
    teacher=Teacher(inputs=('clean', 'shifted'), loss=_rpat_plus_plus_term, weight=lambda config: config.rebat.beta),
    post_step_input='clean', validate=_validate_rebat))
# The two reference trainings of the paper's motivating figure (its `evals.py` diagnostic): not adversarial.
STANDARD = register(Method(  # The paper's figure 1 reference: cross-entropy on clean images, no attack.
    name='standard', attack=no_attack, passes=(ADV,), loss=_adversarial_ce_loss))
NOISE = register(Method(  # The figure's other reference: cross-entropy on uniformly perturbed images.
    name='noise', attack=uniform_noise_attack, passes=(ADV,), loss=_adversarial_ce_loss))
