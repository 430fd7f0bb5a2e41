"""The rows of the paper's tables, as the documented config words, train on the smoke model.

The rows are method x RPAT x threat x dataset (plus ReBAT / RPAT++ x threat x dataset). CIFAR-10 and
CIFAR-100 are fake TFDS datasets that this test writes under the real names and versions (3.0.2, the
catalog's features), so the real TFDS readers, class counts and the trainer run end to end.
"""

import glob
import io
import itertools
import json
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import cpu_study, prn18, resnet18, smoke, wrn
from rpat_jax import train
from rpat_jax.config import validation
from rpat_jax.config import threats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK_METHODS = ('pgd_at', 'trades', 'mart', 'consistency')
ALL_ROWS = ([f'{data},{method},{rpat},{norm}' for data, method, rpat, norm in itertools.product(
    ('cifar10', 'cifar100'), BENCHMARK_METHODS, ('no_rpat', 'rpat'), ('linf', 'l2'))]
            + [f'{data},{method},{norm}' for data, method, norm in itertools.product(
                ('cifar10', 'cifar100'), ('rebat', 'rpat_plus_plus'), ('linf', 'l2'))])
# The suite runs 10 rows that hold every pair of values of any two factors (method and RPAT, method and
# threat, method and dataset, RPAT and threat, ...); RPAT_ALL_ROWS=1 runs all 40 (about 4 min on 2 cores).
PAIRWISE_ROWS = (
    'cifar10,pgd_at,no_rpat,linf', 'cifar100,pgd_at,rpat,l2', 'cifar10,mart,no_rpat,linf', 'cifar100,mart,rpat,l2',
    'cifar100,trades,no_rpat,l2', 'cifar10,trades,rpat,linf', 'cifar100,consistency,no_rpat,l2',
    'cifar10,consistency,rpat,linf', 'cifar100,rebat,linf', 'cifar10,rpat_plus_plus,l2')
ROWS = ALL_ROWS if os.environ.get('RPAT_ALL_ROWS') == '1' else PAIRWISE_ROWS


def _png(pixels: np.ndarray) -> io.BytesIO:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  buffer.seek(0)
  return buffer


class _FakeCifar(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """`cifar10` / `cifar100` with the catalog's version and features, random pixels, 64 + 32 images."""
  VERSION = tfds.core.Version('3.0.2')

  def __init__(self, *, dataset: str, **kwargs):
    self.name = dataset
    self._classes = 100 if dataset == 'cifar100' else 10
    super().__init__(**kwargs)

  def _info(self):
    features = {'id': tfds.features.Text(), 'image': tfds.features.Image(shape=(32, 32, 3)),
                'label': tfds.features.ClassLabel(num_classes=self._classes)}
    if self._classes == 100:
      features['coarse_label'] = tfds.features.ClassLabel(num_classes=20)
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(64, 0), 'test': self._generate_examples(32, 1)}

  def _generate_examples(self, count, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
      example = {'id': f'{i}', 'image': _png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
                 'label': i % self._classes}
      if self._classes == 100:
        example['coarse_label'] = i % 20
      yield i, example


@pytest.fixture(scope='module')
def fake_cifar(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  for dataset in ('cifar10', 'cifar100'):
    _FakeCifar(dataset=dataset, data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return str(data_dir)


def _expected(words):
  data, method = words[0], words[1]
  rpat = {'rpat': True, 'no_rpat': False}.get(words[2], False)
  return {'data.name': data, 'method': method, 'rpat.enabled': rpat, 'attack.norm': words[-1],
          'ema.enabled': method in ('rebat', 'rpat_plus_plus')}


@pytest.mark.parametrize('row', ROWS)
def test_every_table_row_trains_the_smoke_model_on_its_dataset(row, fake_cifar, tmp_path):
  config = threats.resolve(smoke.get_config(row))
  flat = {key: config[key.split('.')[0]][key.split('.')[1]] if '.' in key else config[key]
          for key in _expected(row.split(','))}
  assert flat == _expected(row.split(','))
  assert config.attack.eps == pytest.approx(8 / 255 if config.attack.norm == 'linf' else 128 / 255)
  config.update_from_flattened_dict({
      'data.data_dir': fake_cifar, 'data.cache_dir': str(tmp_path / 'cache'), 'batch_size': 16,
      'epochs': 1, 'model.width': 4, 'attack.steps': 1, 'eval.num_examples': 16, 'eval.batch_size': 16,
      'eval.pgd_steps': 1, 'log.progress': 'none', 'ema.start_epoch': 0})
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 1 and np.isfinite(rows[0]['train_loss']) and 0 <= rows[0]['test_pgd_acc'] <= 1
  assert ('train_rpat_loss' in rows[0]) == config.rpat.enabled
  assert ('test_ema_pgd_acc' in rows[0]) == config.ema.enabled


def test_every_documented_config_string_resolves_to_a_valid_config():
  """Each `configs/<file>.py:<words>` in the README, the docs (the log aside) and the configs' docstrings,
  and each `...:<words>` of the table-row column in docs/training.md."""
  documents = [os.path.join(ROOT, 'README.md')] + [
      path for path in glob.glob(os.path.join(ROOT, 'docs', '*.md')) if not path.endswith('benchmarks_log.md')] + [
      path for path in glob.glob(os.path.join(ROOT, 'configs', '*.py'))]
  text = ''.join(open(path).read() for path in documents)
  training = open(os.path.join(ROOT, 'docs', 'training.md')).read()
  table = training.split('### One command per table row', 1)[1].split('\n#', 1)[0]
  files = {'prn18': prn18, 'resnet18': resnet18, 'wrn': wrn, 'smoke': smoke, 'cpu_study': cpu_study}
  commands = sorted(set(re.findall(r'configs/(\w+)\.py:([\w,]+)', text) + [
      ('prn18', words) for words in re.findall(r'`\.\.\.:([\w,]+)`', table)]))
  assert len(commands) >= 12 and {name for name, _ in commands} >= {'prn18', 'resnet18', 'wrn', 'cpu_study'}
  for name, words in commands:
    config = threats.resolve(files[name].get_config(words))
    config.data.name = 'synthetic'  # Not prepared here; the words' own data checks are above.
    validation.validate(config, device_count=1)
