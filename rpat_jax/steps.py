"""The pure train and evaluation steps: augmentation, attack, objective and update in one function.

`train_step(state, batch, rng) -> (state, metrics)` is jitted once with everything inside it. The run's
base key `rng` is folded with `state.step`, so each step's randomness is a function of the step alone
and a resumed run repeats an uninterrupted one exactly. The step knows no method by name: the method's
declaration (`rpat_jax.methods`) gives its attack, its train-mode forwards in order, its loss, its
views and its teacher; RPAT is added here from the logits of x, x' and x~.
"""

import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from rpat_jax import attacks
from rpat_jax import data
from rpat_jax import methods
from rpat_jax import objectives
from rpat_jax import optim
from rpat_jax.forward import Forward

Metrics = Dict[str, jax.Array]
TEACHER_LIMIT = 1e10  # [S] adds the teacher term only when its value is below this (a NaN / inf guard).


class TrainState(train_state.TrainState):
  """Everything a resume needs: step, params, optimiser state, BatchNorm statistics, run key, and the
  weight average {'params', 'batch_stats'} when `ema.enabled` (None otherwise)."""
  batch_stats: Any
  rng: jax.Array  # uint32 key data of the run's base key (`jax.random.key_data`), checkpointable.
  ema: Any = None


def averaged(state: TrainState) -> TrainState:
  """The state with the weight average in place of the online params and BN statistics."""
  return state.replace(params=state.ema['params'], batch_stats=state.ema['batch_stats'])


def update_average(ema, params, batch_stats, decay: jax.Array):
  """EMA of params and BN running statistics: decay * ema + (1 - decay) * online (decay 0 = a copy)."""
  online = {'params': params, 'batch_stats': batch_stats}
  return jax.tree.map(lambda e, o: decay * e + (1.0 - decay) * o, ema, online)


def create_train_state(config: ml_collections.ConfigDict, forward: Forward, tx: optax.GradientTransformation,
                       image_shape: Tuple[int, int, int], seed=None) -> TrainState:
  """A fresh state from `seed` (default `config.seed`; may be traced, for the seeds of a K-seed run): the
  init key and the run key are split from one root key."""
  init_key, run_key = jax.random.split(jax.random.key(config.seed if seed is None else seed))
  variables = forward.init(init_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
  ema = None
  if config.ema.enabled:  # Its own buffers: the state is donated to the step.
    ema = jax.tree.map(jnp.copy, {'params': variables['params'], 'batch_stats': variables['batch_stats']})
  return TrainState.create(apply_fn=forward.model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'], rng=jax.random.key_data(run_key), ema=ema)


def rpat_active(config: ml_collections.ConfigDict, epoch: int) -> bool:
  """Whether epoch `epoch` (0-indexed) trains with RPAT: `rpat.enabled` from `rpat.start_epoch` on.

  Before it the step is the method's own (no x~ forward, no extra clean forward), as the official code,
  whose `epoch >= RA_start` (1-indexed epochs) picks between the two losses: our start_epoch = RA_start - 1.
  """
  return bool(config.rpat.enabled) and epoch >= config.rpat.start_epoch


def _train_forwards(forward: Forward, params, stats, groups: Sequence[jax.Array], batched: bool):
  """Train-mode forwards of `groups` in call order, each group a stack [n, B, ...] (n = 1: one call; n > 1:
  one call per rate, `train_logits_per_rate`), the running statistics updated call after call.

  batched=False: separate passes, as the official code. True: one vmapped pass over all of them with the
  same batch statistics per call and the same final running statistics (`Forward.train_logits_batched`).
  Returns ([logits [n, B, K] per group], final batch_stats).
  """
  sizes = [group.shape[0] for group in groups]
  if batched:
    logits, stats = forward.train_logits_batched(params, stats, jnp.concatenate(groups), sizes)
    return jnp.split(logits, np.cumsum(sizes)[:-1]), stats
  outputs = []
  for group in groups:
    if group.shape[0] == 1:
      logits, stats = forward.train_logits(params, stats, group[0])
      outputs.append(logits[None])
    else:
      logits, stats = forward.train_logits_per_rate(params, stats, group)
      outputs.append(logits)
  return outputs, stats


def train_passes(forward: Forward, passes_config: ml_collections.ConfigDict, params, stats,
                 passes: Sequence[methods.Pass], inputs: Mapping[str, jax.Array]):
  """Runs a method's train-mode forwards in their declared order.

  inputs: {name: images}, 'interp' stacked [R, B, ...]. Returns ({pass name: logits [B, K], or [R, B, K]
  for 'interp'}, final batch_stats). `passes.batched` (passes_config.batched): one vmapped pass, each input
  with its own batch statistics (the official semantics); `passes.fused`: one forward over the concatenated
  inputs, one set of batch statistics for all (faster, not official).
  """
  groups = [inputs[p.input] if p.input == 'interp' else inputs[p.input][None] for p in passes]
  if passes_config.fused:
    flat = jnp.concatenate([group.reshape((-1,) + group.shape[2:]) for group in groups])
    logits, stats = forward.train_logits(params, stats, flat)
    sizes = np.cumsum([group.shape[0] * group.shape[1] for group in groups])[:-1]
    outputs = [part.reshape(group.shape[:2] + part.shape[1:])
               for part, group in zip(jnp.split(logits, sizes), groups)]
  else:
    outputs, stats = _train_forwards(forward, params, stats, groups, passes_config.batched)
  logits = {p.name: (out if p.input == 'interp' else out[0]) for p, out in zip(passes, outputs)}
  return logits, stats


def teacher_logits(config: ml_collections.ConfigDict, forward: Forward, teacher: methods.Teacher, ema, epoch,
                   inputs: Mapping[str, jax.Array]):
  """The weight average's logits of `teacher.inputs` (no gradient) and its BN statistics afterwards.

  `rebat.teacher_bn='eval'`: running statistics, always. 'official': [S]'s accident, where the average is
  still in train mode during its first epoch (`ema.start_epoch`): batch statistics, and each teacher
  forward moves its running statistics before that step's EMA update.
  """
  images = [inputs[name] for name in teacher.inputs]

  def eval_mode(stats):
    return [forward.eval_logits(ema['params'], stats, image) for image in images], stats

  def train_mode(stats):
    outputs = []
    for image in images:
      logits, stats = forward.train_logits(ema['params'], stats, image)
      outputs.append(logits)
    return outputs, stats

  if config.rebat.teacher_bn == 'eval':
    outputs, stats = eval_mode(ema['batch_stats'])
  else:
    outputs, stats = jax.lax.cond(epoch == config.ema.start_epoch, train_mode, eval_mode, ema['batch_stats'])
  return jax.lax.stop_gradient(outputs), stats


def guarded_teacher_term(config, teacher: methods.Teacher, targets, logits: Mapping[str, jax.Array]) -> jax.Array:
  """The teacher term where its value is below TEACHER_LIMIT, else 0 with a zero gradient ([S] does not add
  it then). An infinite teacher logit makes the term NaN: `where(ok, term, 0)` alone would keep the NaN in
  the gradient, so the term is computed again on finite stand-ins when it is left out."""
  value = teacher.loss(config, targets, jax.lax.stop_gradient(logits))
  ok = value < TEACHER_LIMIT  # False for NaN too.
  safe_targets = [jnp.where(ok, target, 0.0) for target in targets]
  safe_logits = {name: jnp.where(ok, z, jax.lax.stop_gradient(jnp.zeros_like(z))) for name, z in logits.items()}
  return jnp.where(ok, teacher.loss(config, safe_targets, safe_logits), 0.0)


def training_views(config: ml_collections.ConfigDict, views: int, batch: Mapping[str, jax.Array], key: jax.Array):
  """The augmented training inputs (x [views * B, H, W, C] in [0, 1], labels [views * B]): `views` random
  crops and flips of each image, drawn with independent keys."""
  augment = functools.partial(data.random_crop_flip, images=batch['image'], padding=config.data.padding,
                              pad_mode=config.data.pad_mode, flip=config.data.flip)
  if views == 1:
    return augment(key), batch['label']
  keys = jax.random.split(key, views)
  return jnp.concatenate([augment(k) for k in keys]), jnp.concatenate([batch['label']] * views)


def attack_logits_fn(config: ml_collections.ConfigDict, forward: Forward, params, batch_stats):
  """The logits function the training attack sees: BN running statistics (`attack.bn_mode='eval'`) or the
  attacked batch's own statistics ('train'); the running statistics are never updated by the attack."""
  if config.attack.bn_mode == 'eval':
    return functools.partial(forward.eval_logits, params, batch_stats)
  return functools.partial(forward.batch_stat_logits, params, batch_stats)


def adversarial_batch(config: ml_collections.ConfigDict, forward: Forward, state: TrainState,
                      batch: Mapping[str, jax.Array], rng: jax.Array):
  """(x, labels, x') of the step `state.step`: the method's views and its inner maximisation."""
  method = methods.get(config.method)
  aug_key, attack_key = jax.random.split(jax.random.fold_in(rng, state.step))
  x, labels = training_views(config, method.views, batch, aug_key)
  logits_fn = attack_logits_fn(config, forward, state.params, state.batch_stats)
  return x, labels, method.attack(config, logits_fn, attack_key, x, labels)


def make_train_step(config: ml_collections.ConfigDict, forward: Forward, steps_per_epoch: int, *,
                    with_rpat: Optional[bool] = None):
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)` for `config`.

  batch: {'image': uint8 [B, H, W, C], 'label': int32 [B]}, raw (augmentation happens here).
  rng: the run's base key (typed). metrics: scalar float32 device arrays.
  with_rpat: the step of an epoch where `rpat_active` holds (None: `rpat.enabled`); the loop picks it per
  epoch, so a delayed RPAT (`rpat.start_epoch`) runs none of its forwards before it starts.
  """
  method = methods.get(config.method)
  with_rpat = bool(config.rpat.enabled) if with_rpat is None else with_rpat
  passes = method.passes_for(with_rpat)
  rpat = config.rpat
  regulariser = objectives.RPAT_FORMS[rpat.form]
  rates = jnp.asarray(rpat.rates, jnp.float32)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch)  # For logging the step's lr.
  wanted = [p.input for p in passes] + list(method.teacher.inputs if method.teacher else ())
  wanted += [method.post_step_input] if method.post_step_input else []

  def rpat_term(logits):
    z_clean, z_adv = logits['clean'], logits['adv']
    if rpat.detach_target:
      z_clean, z_adv = jax.lax.stop_gradient(z_clean), jax.lax.stop_gradient(z_adv)
    return regulariser(logits['interp'], z_clean, z_adv, rates)

  def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array) -> Tuple[TrainState, Metrics]:
    x, labels, x_adv = adversarial_batch(config, forward, state, batch, rng)
    inputs = methods.make_inputs(config, x, x_adv, wanted)
    epoch = state.step // steps_per_epoch
    targets, teacher_stats = None, None
    if method.teacher is not None:
      targets, teacher_stats = teacher_logits(config, forward, method.teacher, state.ema, epoch, inputs)

    def loss_fn(params):
      logits, stats = train_passes(forward, config.passes, params, state.batch_stats, passes, inputs)
      loss, aux = method.loss(config, logits, labels)
      if method.teacher is not None:  # From the warm-up epoch on: before it the average is a copy.
        aux['teacher_loss'] = guarded_teacher_term(config, method.teacher, targets, logits)
        weight = jnp.where(epoch >= config.ema.start_epoch, method.teacher.weight(config), 0.0)
        loss = loss + weight * aux['teacher_loss']
      if with_rpat:
        aux['rpat_loss'] = rpat_term(logits)
        loss = loss + rpat.lam * aux['rpat_loss']
      if 'clean' in logits:
        aux['clean_acc'] = objectives.accuracy(logits['clean'], labels)
      aux['acc'] = objectives.accuracy(logits['adv'], labels)
      return loss, (stats, aux)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = schedule(state.step)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if method.post_step_input:  # [S] logs a train-mode forward after the step: it moves BN statistics.
      _, post_step_stats = forward.train_logits(state.params, state.batch_stats, inputs[method.post_step_input])
      state = state.replace(batch_stats=post_step_stats)
    if config.ema.enabled:  # A copy before ema.start_epoch, then an average per step ([S]'s WA).
      decay = jnp.where(epoch >= config.ema.start_epoch, config.ema.decay, 0.0)
      ema = state.ema if teacher_stats is None else {**state.ema, 'batch_stats': teacher_stats}
      state = state.replace(ema=update_average(ema, state.params, state.batch_stats, decay))
    metrics = {'loss': loss, 'lr': lr, **aux}
    return state, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), metrics)

  return train_step


def make_evaluate(config: ml_collections.ConfigDict, forward: Forward):
  """Returns `evaluate(state, images, labels, mask, key) -> {'clean_correct', 'pgd_correct', 'count'}`.

  images: uint8 [N_batches, B, H, W, C] (padded), labels [N_batches, B], mask [N_batches, B] bool
  (False on padding, so each test image counts once on any batch or device count). The whole test
  subset runs in one compiled call (`lax.map` over batches): BN in eval mode, PGD-k with the training
  threat, a fixed key folded per batch.
  """
  attack = config.attack

  def evaluate(state: TrainState, images, labels, mask, key) -> Metrics:
    def one_batch(args):
      index, batch_images, batch_labels, batch_mask = args
      x = data.to_float(batch_images)
      logits_fn = functools.partial(forward.eval_logits, state.params, state.batch_stats)
      x_adv = attacks.pgd(logits_fn, jax.random.fold_in(key, index), x, batch_labels, norm=attack.norm,
                          eps=attack.eps, step_size=attack.step_size, steps=config.eval.pgd_steps)
      clean = (jnp.argmax(logits_fn(x), -1) == batch_labels) & batch_mask
      robust = (jnp.argmax(logits_fn(x_adv), -1) == batch_labels) & batch_mask
      return clean.sum(), robust.sum(), batch_mask.sum()

    indices = jnp.arange(images.shape[0])
    clean, robust, count = jax.lax.map(one_batch, (indices, images, labels, mask))
    return {'clean_correct': clean.sum(), 'pgd_correct': robust.sum(), 'count': count.sum()}

  return evaluate
