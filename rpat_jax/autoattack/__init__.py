"""AutoAttack (Croce & Hein, ICML 2020) in JAX: APGD (CE, DLR, targeted DLR), FAB (targeted and
untargeted) and Square, and the ensemble (versions standard, plus, custom).

  from rpat_jax import autoattack
  result = autoattack.evaluate(logits_fn, x, y, norm='Linf', eps=8/255)  # x: [N, H, W, C] in [0, 1]

The attacks on their own: `autoattack.apgd.apgd` (losses 'ce', 'dlr', 'dlr-targeted'),
`autoattack.fab.fab_targeted`, `autoattack.fab.fab_untargeted`, `autoattack.square.square_attack`.
"""

from rpat_jax.autoattack import apgd, checks, fab, losses, square
from rpat_jax.autoattack.ensemble import ATTACKS, DEFAULT_OPTIONS, evaluate

__all__ = ['apgd', 'checks', 'fab', 'losses', 'square', 'evaluate', 'ATTACKS', 'DEFAULT_OPTIONS']
