"""The pure train and evaluation steps: augmentation, attack, objective and update in one function.

`train_step(state, batch, rng) -> (state, metrics)` is jitted once with everything inside it. The run's
base key `rng` is folded with `state.step`, so each step's randomness is a function of the step alone
and a resumed run repeats an uninterrupted one exactly.
"""

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from rpat_jax import attacks
from rpat_jax import data
from rpat_jax import objectives
from rpat_jax import optim
from rpat_jax.forward import Forward

Metrics = Dict[str, jax.Array]


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
                       image_shape: Tuple[int, int, int]) -> TrainState:
  """A fresh state from `config.seed`: the init key and the run key are split from one root key."""
  init_key, run_key = jax.random.split(jax.random.key(config.seed))
  variables = forward.init(init_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
  ema = None
  if config.ema.enabled:  # Its own buffers: the state is donated to the step.
    ema = jax.tree.map(jnp.copy, {'params': variables['params'], 'batch_stats': variables['batch_stats']})
  return TrainState.create(apply_fn=forward.model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats'], rng=jax.random.key_data(run_key), ema=ema)


def _train_forwards(forward: Forward, params, stats, groups, batched: bool):
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


def _rpat_pass(forward: Forward, rpat: ml_collections.ConfigDict, params, stats, x, x_adv):
  """The official order of train-mode forwards for PGD-AT + RPAT: z(x') -> z(x~) -> z(x).

  Returns (z_adv, z_interp [R, B, K], z_clean, final batch_stats). With `fused_forward` the three
  inputs go through one forward and share one set of batch statistics; with `batched_forwards` they go
  through one vmapped pass, each with its own (the official semantics).
  """
  rates = jnp.asarray(rpat.rates, jnp.float32)
  x_interp = objectives.interpolate(x, x_adv, rates)  # [R, B, H, W, C]
  if rpat.fused_forward:
    num_rates, batch = x_interp.shape[:2]
    stacked = jnp.concatenate([x_adv, x_interp.reshape((-1,) + x.shape[1:]), x])
    logits, stats = forward.train_logits(params, stats, stacked)
    z_adv = logits[:batch]
    z_interp = logits[batch:batch * (num_rates + 1)].reshape((num_rates, batch, -1))
    z_clean = logits[batch * (num_rates + 1):]
    return z_adv, z_interp, z_clean, stats
  (z_adv, z_interp, z_clean), stats = _train_forwards(forward, params, stats, [x_adv[None], x_interp, x[None]],
                                                      rpat.batched_forwards)
  return z_adv[0], z_interp, z_clean[0], stats


def _adversarial_examples(config: ml_collections.ConfigDict, logits_fn, key, x, labels):
  """The method's inner maximisation: PGD on CE (PGD-AT), on KL to the clean prediction (TRADES) or on
  CE from a small Gaussian start (MART), with the BatchNorm mode the caller chose for `logits_fn`."""
  attack = config.attack
  hyper = dict(norm=attack.norm, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
               unroll=attack.unroll)
  if config.method in ('pgd_at', 'consistency'):
    return attacks.pgd(logits_fn, key, x, labels, random_init=attack.random_start, **hyper)
  if config.method == 'trades':
    clean_logits = jax.lax.stop_gradient(logits_fn(x))
    loss_fn = lambda logits: jnp.sum(objectives.kl_terms(clean_logits, logits))
  else:
    loss_fn = lambda logits: attacks.cross_entropy_sum(logits, labels)
  return attacks.small_noise_pgd(logits_fn, key, x, loss_fn, **hyper)


def _teacher_logits(config: ml_collections.ConfigDict, forward: Forward, ema, epoch, x, x_adv):
  """The weight average's logits for ReBAT ([z(x')]) or RPAT++ ([z(x), z(x + r delta)], [S]'s order), and
  the average's BN statistics afterwards.

  `rebat.teacher_bn='eval'`: running statistics, always. 'official': [S]'s accident, where the average is
  still in train mode during its first epoch (`ema.start_epoch`): batch statistics, and each teacher
  forward moves its running statistics before that step's EMA update.
  """
  if config.method == 'rebat':
    inputs = [x_adv]
  else:
    inputs = [x, jnp.clip(x + config.rebat.rate * (x_adv - x), 0.0, 1.0)]

  def eval_mode(stats):
    return [forward.eval_logits(ema['params'], stats, image) for image in inputs], stats

  def train_mode(stats):
    outputs = []
    for image in inputs:
      logits, stats = forward.train_logits(ema['params'], stats, image)
      outputs.append(logits)
    return outputs, stats

  if config.rebat.teacher_bn == 'eval':
    outputs, stats = eval_mode(ema['batch_stats'])
  else:
    outputs, stats = jax.lax.cond(epoch == config.ema.start_epoch, train_mode, eval_mode, ema['batch_stats'])
  return jax.lax.stop_gradient(outputs), stats


def make_train_step(config: ml_collections.ConfigDict, forward: Forward, steps_per_epoch: int):
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)` for `config`.

  batch: {'image': uint8 [B, H, W, C], 'label': int32 [B]}, raw (augmentation happens here).
  rng: the run's base key (typed). metrics: scalar float32 device arrays.
  """
  attack, rpat = config.attack, config.rpat
  regulariser = objectives.RPAT_FORMS[rpat.form]
  rates = jnp.asarray(rpat.rates, jnp.float32)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch)  # For logging the step's lr.

  def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array) -> Tuple[TrainState, Metrics]:
    aug_key, attack_key = jax.random.split(jax.random.fold_in(rng, state.step))
    augment = functools.partial(data.random_crop_flip, images=batch['image'], padding=config.data.padding,
                                pad_mode=config.data.pad_mode, flip=config.data.flip)
    labels = batch['label']
    if config.method == 'consistency':  # Two augmented views of each image: a batch of 2B.
      view_keys = jax.random.split(aug_key)
      x = jnp.concatenate([augment(view_keys[0]), augment(view_keys[1])])
      labels = jnp.concatenate([labels, labels])
    else:
      x = augment(aug_key)

    if attack.bn_mode == 'eval':
      attack_logits = functools.partial(forward.eval_logits, state.params, state.batch_stats)
    else:
      attack_logits = functools.partial(forward.batch_stat_logits, state.params, state.batch_stats)
    x_adv = _adversarial_examples(config, attack_logits, attack_key, x, labels)

    epoch = state.step // steps_per_epoch
    lam = jnp.where(epoch >= rpat.start_epoch, rpat.lam, 0.0)
    # [B] weights the consistency term with the same --lam as RPAT; `consistency.lam` separates them.
    consistency_weight = rpat.lam if config.consistency.lam is None else config.consistency.lam

    def rpat_term(z_interp, z_clean, z_adv):
      if rpat.detach_target:
        z_clean, z_adv = jax.lax.stop_gradient(z_clean), jax.lax.stop_gradient(z_adv)
      return regulariser(z_interp, z_clean, z_adv, rates)

    teacher_logits, teacher_stats = None, None
    if config.method in ('rebat', 'rpat_plus_plus'):  # The weight average's logits: no gradient.
      teacher_logits, teacher_stats = _teacher_logits(config, forward, state.ema, epoch, x, x_adv)

    def loss_fn(params):
      aux = {}
      if config.method in ('pgd_at', 'consistency'):
        if rpat.enabled:  # Official order: z(x') -> z(x~) -> z(x).
          z_adv, z_interp, z_clean, stats = _rpat_pass(forward, rpat, params, state.batch_stats, x, x_adv)
          aux.update(rpat_loss=rpat_term(z_interp, z_clean, z_adv), clean_acc=objectives.accuracy(z_clean, labels))
        else:
          z_adv, stats = forward.train_logits(params, state.batch_stats, x_adv)
        base_loss = objectives.cross_entropy(z_adv, labels)
        aux.update(ce_loss=base_loss)
        if config.method == 'consistency':  # JS between the two views' adversarial predictions.
          views = jnp.split(z_adv, 2)
          aux.update(consistency_loss=objectives.jensen_shannon(views[0], views[1], config.consistency.temperature))
          base_loss = base_loss + consistency_weight * aux['consistency_loss']
      elif config.method in ('rebat', 'rpat_plus_plus'):  # [S]: one online forward; the average teaches.
        z_adv, stats = forward.train_logits(params, state.batch_stats, x_adv)
        base_loss = objectives.cross_entropy(z_adv, labels)
        if config.method == 'rebat':
          regulariser_loss = objectives.boat_kl(teacher_logits[0], z_adv)
        else:
          regulariser_loss = objectives.rpat_plus_plus_kl(*teacher_logits, z_adv, config.rebat.rate)
        regulariser_loss = jnp.where(regulariser_loss < 1e10, regulariser_loss, 0.0)  # [S]'s NaN/inf guard.
        aux.update(ce_loss=base_loss, teacher_loss=regulariser_loss)
        beta = jnp.where(epoch >= config.ema.start_epoch, config.rebat.beta, 0.0)  # From the warm-up epoch.
        base_loss = base_loss + beta * regulariser_loss
      else:  # TRADES: z(x) -> z(x') -> z(x) (the KL target) -> z(x~); MART: z(x) -> z(x') -> z(x~).
        groups = [x[None], x_adv[None]] + ([x[None]] if config.method == 'trades' else [])
        if rpat.enabled:
          groups.append(objectives.interpolate(x, x_adv, rates))
        outputs, stats = _train_forwards(forward, params, state.batch_stats, groups, rpat.batched_forwards)
        z_clean, z_adv = outputs[0][0], outputs[1][0]
        if config.method == 'trades':
          base_loss, ce_loss, kl_loss = objectives.trades_loss(z_clean, z_adv, outputs[2][0], labels, config.beta)
          aux.update(ce_loss=ce_loss, kl_loss=kl_loss)
        else:
          base_loss, adversarial_loss, robust_loss = objectives.mart_loss(z_clean, z_adv, labels, config.beta)
          aux.update(ce_loss=objectives.cross_entropy(z_adv, labels), mart_adv_loss=adversarial_loss,
                     mart_robust_loss=robust_loss)
        aux.update(clean_acc=objectives.accuracy(z_clean, labels))
        if rpat.enabled:
          aux.update(rpat_loss=rpat_term(outputs[-1], z_clean, z_adv))
      aux.update(acc=objectives.accuracy(z_adv, labels))
      return base_loss + lam * aux.get('rpat_loss', 0.0), (stats, aux)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = schedule(state.step)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if config.method in ('rebat', 'rpat_plus_plus'):  # [S] logs a clean train-mode forward after the step,
      _, post_step_stats = forward.train_logits(state.params, state.batch_stats, x)  # moving BN statistics.
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
