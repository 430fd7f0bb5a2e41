"""The training losses as pure functions of logits: cross-entropy, TRADES, MART, Consistency-AT's
Jensen-Shannon term, and the RPAT regulariser.

RPAT (Robust Perception Adversarial Training) asks the logits to move linearly along the segment from a
clean image x to its adversarial example x'. With x~ = r*x + (1-r)*x' (r weights the clean image, as in
the official code) the code form of the regulariser is

    L_code(r) = mean_{b,k} ( z(x~) - [r*z(x) + (1-r)*z(x')] )^2          (nn.MSELoss: mean over B*K)

and the seed (paper) form, with a = 1 - r the weight on the perturbation, is

    L_paper(a) = mean_{b,k} ( (z(x~) - z(x))/a - (z(x') - z(x~))/(1-a) )^2 = L_code / (a(1-a))^2,

so at r = 0.5 the paper form is 16x the code form: lambda_code = 1.0 equals lambda_paper = 1/16.
With several rates the regulariser is the mean over rates.

References: RPAT, ICCV'25, arXiv 2508.02186; what the official code computes: docs/fidelity.md.
"""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy, computed in float32. logits [B, K], labels [B] int."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def interpolate(x: jax.Array, x_adv: jax.Array, rates: jax.Array) -> jax.Array:
  """x~ for each rate: [R, B, ...] = r*x + (1-r)*x' with r weighting the clean image."""
  rates = jnp.asarray(rates, x.dtype).reshape((-1,) + (1,) * x.ndim)
  return rates * x[None] + (1.0 - rates) * x_adv[None]


def _per_rate(rates: jax.Array, ndim: int) -> jax.Array:
  return jnp.asarray(rates, jnp.float32).reshape((-1,) + (1,) * ndim)


def rpat_code_form(z_interp: jax.Array, z_clean: jax.Array, z_adv: jax.Array,
                   rates: jax.Array) -> jax.Array:
  """The official code's regulariser, averaged over rates.

  Args:
    z_interp: [R, B, K] logits of x~ for each rate.
    z_clean, z_adv: [B, K] logits of x and x'.
    rates: [R] interpolation rates r (weight on the clean image).

  Returns:
    mean over R*B*K of (z(x~) - r z(x) - (1-r) z(x'))^2, a float32 scalar.
  """
  r = _per_rate(rates, z_clean.ndim)
  target = r * z_clean.astype(jnp.float32) + (1.0 - r) * z_adv.astype(jnp.float32)
  return jnp.mean(jnp.square(z_interp.astype(jnp.float32) - target))


def rpat_paper_form(z_interp: jax.Array, z_clean: jax.Array, z_adv: jax.Array,
                    rates: jax.Array) -> jax.Array:
  """The seed formula MSE((z~ - z)/a, (z' - z~)/(1-a)), a = 1 - r, averaged over rates. Shapes as above."""
  a = 1.0 - _per_rate(rates, z_clean.ndim)
  z_interp, z_clean, z_adv = (z.astype(jnp.float32) for z in (z_interp, z_clean, z_adv))
  return jnp.mean(jnp.square((z_interp - z_clean) / a - (z_adv - z_interp) / (1.0 - a)))


RPAT_FORMS = {'code': rpat_code_form, 'paper': rpat_paper_form}


def paper_lambda_to_code(lam_paper: float, rate: float) -> float:
  """The code-form lambda that gives the same loss as `lam_paper` in the seed form at rate r."""
  a = 1.0 - rate
  return lam_paper / (a * (1.0 - a)) ** 2


def kl_terms(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """[B, K] elementwise KL(p_target || p) terms, p = softmax: PyTorch's `kl_div(log_softmax(logits),
  softmax(target_logits), reduction='none')`. Gradients flow through both sides."""
  target = jax.nn.softmax(target_logits.astype(jnp.float32), axis=-1)
  return jax.scipy.special.xlogy(target, target) - target * jax.nn.log_softmax(logits.astype(jnp.float32), -1)


def trades_loss(z_clean: jax.Array, z_adv: jax.Array, z_target: jax.Array, labels: jax.Array, beta: float):
  """TRADES (Zhang et al. 2019) as RPAT_Benchmarks computes it; returns (total, ce, kl).

  CE(z(x), y) + beta * KL(softmax z_target || softmax z(x')), batch mean. z_target is the logits of a
  second train-mode forward of x (the official code's KL target; not detached).
  """
  ce = cross_entropy(z_clean, labels)
  kl = jnp.sum(kl_terms(z_target, z_adv)) / z_adv.shape[0]
  return ce + beta * kl, ce, kl


def mart_loss(z_clean: jax.Array, z_adv: jax.Array, labels: jax.Array, beta: float):
  """MART (Wang et al. 2020) as the official code computes it; returns (total, adversarial, robust).

  adversarial = CE(z(x'), y) - mean log(1.0001 - p_hat(x') + 1e-12), p_hat the most probable wrong class;
  robust = (1/B) sum_i KL(p(x_i) || p(x'_i)) (1.0000001 - p_y(x_i)), with log(p(x') + 1e-12).
  """
  adv_probs = jax.nn.softmax(z_adv.astype(jnp.float32), axis=-1)
  top_two = jnp.argsort(adv_probs, axis=-1)[:, -2:]
  wrong = jnp.where(top_two[:, -1] == labels, top_two[:, -2], top_two[:, -1])
  wrong_prob = jnp.take_along_axis(adv_probs, wrong[:, None], axis=-1)[:, 0]
  adversarial = cross_entropy(z_adv, labels) - jnp.mean(jnp.log(1.0001 - wrong_prob + 1e-12))
  clean_probs = jax.nn.softmax(z_clean.astype(jnp.float32), axis=-1)
  true_prob = jnp.take_along_axis(clean_probs, labels[:, None], axis=-1)[:, 0]
  kl = jnp.sum(jax.scipy.special.xlogy(clean_probs, clean_probs) - clean_probs * jnp.log(adv_probs + 1e-12), -1)
  robust = jnp.sum(kl * (1.0000001 - true_prob)) / z_adv.shape[0]
  return adversarial + beta * robust, adversarial, robust


def jensen_shannon(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """Consistency-AT's JS divergence between two views at temperature T, batch mean (Tack et al. 2022).

  p_k = softmax(z_k / T), m = (p1 + p2) / 2; 0.5 * [KL(p1 || m) + KL(p2 || m)] with log(max(m, 1e-8)).
  """
  p1 = jax.nn.softmax(z1.astype(jnp.float32) / temperature, axis=-1)
  p2 = jax.nn.softmax(z2.astype(jnp.float32) / temperature, axis=-1)
  log_m = jnp.log(jnp.maximum(0.5 * (p1 + p2), 1e-8))
  kl = lambda p: jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_m) / p.shape[0]
  return 0.5 * (kl(p1) + kl(p2))


def boat_kl(z_teacher_adv: jax.Array, z_adv: jax.Array) -> jax.Array:
  """ReBAT's BoAT term: KL(softmax z_wa(x') || softmax z(x')), batch mean; the teacher carries no gradient."""
  return jnp.sum(kl_terms(jax.lax.stop_gradient(z_teacher_adv), z_adv)) / z_adv.shape[0]


def rpat_plus_plus_kl(z_teacher_clean: jax.Array, z_teacher_interp: jax.Array, z_adv: jax.Array,
                      rate: float) -> jax.Array:
  """RPAT++'s term ([S] train_cifar_ra.py), batch mean, teacher without gradient:

  KL(softmax(z_wa(x + r*delta) - (1-r)*z_wa(x)) || softmax(r*z(x'))), r the weight on delta (0.5 there):
  the linearity z(x~) = (1-r)z(x) + r*z(x') with the averaged model on the left and the online model's
  adversarial logits on the right.
  """
  target = jax.lax.stop_gradient(z_teacher_interp.astype(jnp.float32) - (1.0 - rate) * z_teacher_clean)
  return jnp.sum(kl_terms(target, rate * z_adv.astype(jnp.float32))) / z_adv.shape[0]
