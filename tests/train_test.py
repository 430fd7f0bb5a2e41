"""End to end: the loop learns, writes its records, and a resumed run equals an uninterrupted one."""

import json
import os

import chex
import numpy as np

from helpers import tiny_config
from rpat_jax import train


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_training_learns_and_records(tmp_path):
  config = tiny_config(**{'epochs': 3, 'data.synthetic.num_train': 2048, 'data.synthetic.num_test': 128})
  train.train_and_evaluate(config, str(tmp_path))
  rows = _rows(tmp_path)
  assert [row['epoch'] for row in rows] == [1, 2, 3]
  for key in ('epoch', 'step', 'lr', 'train_loss', 'train_acc', 'train_rpat_loss', 'train_ce_loss',
              'test_clean_acc', 'test_pgd_acc', 'epoch_seconds', 'images_per_second'):
    assert key in rows[-1], key
  assert rows[-1]['train_loss'] < rows[0]['train_loss']
  assert rows[-1]['test_clean_acc'] > 0.3  # 10 classes: chance is 0.1.
  assert 0 <= rows[-1]['test_pgd_acc'] <= rows[-1]['test_clean_acc']
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', '3']  # keep = 3.
  assert len(os.listdir(tmp_path / 'best')) == 1
  assert os.listdir(tmp_path / 'tensorboard')
  assert json.load(open(tmp_path / 'config.json'))['attack']['eps'] == 8 / 255


def test_resume_gives_the_uninterrupted_result(tmp_path):
  """Also across the start of a delayed RPAT (epoch 2): the loop switches steps at the epoch, as [B]."""
  delayed = {'rpat.start_epoch': 1}
  straight = train.train_and_evaluate(tiny_config(epochs=2, **delayed), str(tmp_path / 'straight'))
  train.train_and_evaluate(tiny_config(epochs=1, **delayed), str(tmp_path / 'resumed'))
  resumed = train.train_and_evaluate(tiny_config(epochs=2, **delayed), str(tmp_path / 'resumed'))
  assert int(resumed.step) == int(straight.step) == 8
  chex.assert_trees_all_close(resumed.params, straight.params, atol=1e-6, rtol=0)
  chex.assert_trees_all_close(resumed.batch_stats, straight.batch_stats, atol=1e-6, rtol=0)
  chex.assert_trees_all_close(resumed.opt_state, straight.opt_state, atol=1e-6, rtol=0)
  a, b = _rows(tmp_path / 'straight'), _rows(tmp_path / 'resumed')
  assert [r['epoch'] for r in b] == [1, 2]
  for key in ('train_loss', 'test_clean_acc', 'test_pgd_acc'):
    np.testing.assert_allclose(a[-1][key], b[-1][key], atol=1e-6)
  for rows in (a, b):  # RPAT from the second epoch: no RPAT forwards, so no RPAT metrics, before it.
    assert 'train_rpat_loss' not in rows[0] and 'train_clean_acc' not in rows[0]
    assert rows[1]['train_rpat_loss'] > 0 and 'train_clean_acc' in rows[1]


def test_a_finished_run_restarted_does_nothing_more(tmp_path):
  first = train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
  again = train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))
  chex.assert_trees_all_equal(first.params, again.params)
  assert len(_rows(tmp_path)) == 1
