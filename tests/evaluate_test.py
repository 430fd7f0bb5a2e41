"""The evaluation binary on a checkpoint written by the training loop."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, tiny_config
from rpat_jax import evaluate, train

SMALL_AA = {'apgd-ce': {'n_iter': 5}, 'apgd-t': {'n_iter': 5, 'n_target_classes': 3},
            'fab-t': {'n_iter': 5, 'n_target_classes': 3}, 'square': {'n_queries': 20}}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One epoch of the tiny config with a weight average (decay 0.5): (config, workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp('run'))
  config = tiny_config(epochs=1, **{'ema.enabled': True, 'ema.decay': 0.5})
  state = train.train_and_evaluate(config, workdir)
  return config, workdir, state


def test_results_have_every_number_and_agree_with_each_other(trained):
  config, workdir, _ = trained
  results = evaluate.run(config, workdir, n_examples=48, aa_options=SMALL_AA, batch_size=32)
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    saved = json.load(f)
  for key in ('clean_acc', 'pgd20_acc', 'cw20_acc', 'aa_acc', 'mean', 'nrr', 'n_examples', 'checkpoint_step',
              'per_attack', 'seconds', 'flags'):
    assert key in saved, key
  assert saved['n_examples'] == 48 and saved['checkpoint_step'] == 1
  assert list(saved['per_attack']) == ['apgd-ce', 'apgd-t', 'fab-t', 'square']
  clean, robust = saved['clean_acc'], saved['aa_acc']
  assert robust <= clean and saved['pgd20_acc'] <= clean and saved['cw20_acc'] <= clean
  assert saved['mean'] == pytest.approx((clean + robust) / 2)
  assert saved['nrr'] == pytest.approx(2 * clean * robust / (clean + robust) if clean + robust else 0.0)
  assert results['aa_acc'] == saved['aa_acc']
  table = open(os.path.join(workdir, 'eval', 'results.md')).read()
  assert '| AA |' in table and '| NRR |' in table and 'checkpoint epoch 1' in table


def test_cli_rejects_unknown_attacks_with_one_line(tmp_path):
  workdir = str(tmp_path)
  proc = subprocess.run([sys.executable, '-m', 'rpat_jax.evaluate', '--config=configs/smoke.py',
                         f'--workdir={workdir}', '--aa_version=custom', '--attacks=apgd-ce,apgd-x'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("rpat_jax.evaluate: error: attack 'apgd-x'; allowed")


def test_the_weight_average_is_trained_checkpointed_and_evaluated_when_asked(tmp_path, trained):
  import jax.numpy as jnp
  import numpy as np
  from rpat_jax import data, experiment
  from rpat_jax.run import checkpointing
  config, workdir, state = trained
  row = json.loads(open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()[-1])
  assert {'test_ema_clean_acc', 'test_ema_pgd_acc', 'test_clean_acc'} <= set(row)
  options = {'apgd-ce': {'n_iter': 3, 'n_restarts': 1}}
  results = evaluate.run(config, workdir, n_examples=32, aa_version='custom', attack_names=['apgd-ce'],
                         aa_options=options, batch_size=32, ema=True)
  assert os.path.exists(os.path.join(workdir, 'eval', 'results_ema.json')) and results['ema']
  dataset = data.load_dataset(config.data)
  forward, *_ = evaluate.restore_variables(config, workdir, checkpoint='best')
  x = jnp.asarray(dataset.test_images[:32], jnp.float32) / 255.0
  logits = forward.eval_logits(state.ema['params'], state.ema['batch_stats'], x)
  expected = float(np.mean(np.asarray(logits).argmax(1) == dataset.test_labels[:32]))
  assert results['clean_acc'] == pytest.approx(expected)
  plain = tiny_config(epochs=1)  # A checkpoint without a weight average: --ema is refused in one line.
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=1)
  checkpoints.save(1, experiment.create(plain).init_state(), {'epoch': 1, 'best_pgd_acc': 0.0, 'best_epoch': 1}, True)
  checkpoints.close()
  with pytest.raises(ValueError, match='no weight average'):
    evaluate.run(plain, str(tmp_path), n_examples=32, aa_version='custom', attack_names=['apgd-ce'],
                 aa_options=options, batch_size=32, ema=True)
