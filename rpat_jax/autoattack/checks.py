"""AutoAttack's sanity checks (official checks.py; docs/autoattack.md, section 5), as flags, not warnings.

Each check returns {'raised': bool, 'detail': str}. None stops the evaluation; the flags go into the
results so a reader sees them next to the numbers.
"""

from typing import Dict, Sequence

import numpy as np


def _flag(raised: bool, detail: str) -> Dict:
  return {'raised': bool(raised), 'detail': detail}


def randomized() -> Dict:
  """The official check compares several forward passes: a randomised model needs EOT. The ensemble runs
  logits_fn compiled, a function of the images alone (no key), so passes over the same images cannot
  differ and the check does not apply; reported as n/a (as `dynamic`)."""
  return {'raised': False, 'detail': 'n/a: logits_fn runs compiled, a function of the images alone'}


def range_output(logits: np.ndarray) -> Dict:
  """Raised if the outputs (clean logits [N, K]) look like probabilities (softmax applied), which flattens
  the gradients."""
  out = np.asarray(logits, np.float64)
  raised = out.max() < 1 + 1e-5 and out.min() > -1e-5 and np.abs(out.sum(1) - 1).max() < 1e-5
  return _flag(raised, 'outputs look like probabilities: pass logits' if raised else 'outputs are logits')


def n_classes(num_classes: int, attacks: Sequence[str], apgd_targets: int, fab_targets: int) -> Dict:
  """Raised if the class count is too small for the losses and target counts asked for."""
  problems = []
  if num_classes <= 2 and any(a in attacks for a in ('apgd-dlr', 'apgd-t')):
    problems.append('DLR needs at least 3 classes')
  if num_classes == 3 and 'apgd-t' in attacks:
    problems.append('targeted DLR needs at least 4 classes')
  if 'apgd-t' in attacks and apgd_targets + 1 > num_classes:
    problems.append(f'apgd-t asks for {apgd_targets} targets of {num_classes - 1} other classes')
  if 'fab-t' in attacks and fab_targets + 1 > num_classes:
    problems.append(f'fab-t asks for {fab_targets} targets of {num_classes - 1} other classes')
  return _flag(bool(problems), '; '.join(problems) or f'{num_classes} classes')


def dynamic() -> Dict:
  """The official check traces Python calls for inference-time optimisation; a pure JAX function
  cannot run Python during the forward pass, so it does not apply."""
  return {'raised': False, 'detail': 'n/a: a JAX logits function is pure'}


def zero_gradients(points: int) -> Dict:
  return _flag(points > 0, f'{points} points with an all-zero gradient at an APGD start (DLR losses)'
               if points else 'no zero gradients')


def square_success(per_attack: Dict[str, float], clean_acc: float) -> Dict:
  """Raised if Square, run after white-box attacks, lowers robust accuracy by more than 0.2 points
  below all of them: a black-box attack beating gradients suggests gradient masking."""
  names = list(per_attack)
  if 'square' not in names or names.index('square') == 0:
    return _flag(False, 'square did not run after another attack')
  before = [clean_acc] + [per_attack[n] for n in names[:names.index('square')]]
  after = per_attack['square']
  raised = after < min(before) - 0.002
  return _flag(raised, f'square {after:.4f} vs {min(before):.4f} before it'
               + ('; possible gradient masking' if raised else ''))
