"""CIFAR-10/100 prepared without TensorFlow: from a tarball served on 127.0.0.1, a local tarball or a
folder, in the canonical row order, read by TFDS under the real names; and every refusal in one line with
nothing left behind (wrong MD5, truncated tarball, missing batch, full disk, a second writer waits)."""

import functools
import hashlib
import http.server
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
from absl import flags

from helpers import ROOT
from configs import default
from rpat_jax import data
from rpat_jax.data import cifar
from rpat_jax.data import prepare

SIZES = {'cifar10': {'train': (3, 3, 3, 3, 3), 'test': (4,)}, 'cifar100': {'train': (7,), 'test': (5,)}}


def _release(root, name, seed=0):
  """A release in the canonical python format: the extracted folder and its tar.gz; returns the rows."""
  rng = np.random.default_rng(seed)
  release = cifar.RELEASES[name]
  folder = root / release.folder
  folder.mkdir(parents=True)
  rows = {}
  for split, files in release.splits.items():
    images, labels = [], {feature: [] for feature in release.labels}
    for file, count in zip(files, SIZES[name][split]):
      pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
      batch = {b'data': pixels, b'batch_label': file.encode()}
      for feature, key in release.labels.items():
        values = rng.integers(0, 100 if feature == 'label' and name == 'cifar100' else 20 if name == 'cifar100'
                              else 10, count)
        batch[key] = [int(v) for v in values]
        labels[feature].append(values)
      (folder / file).write_bytes(pickle.dumps(batch, protocol=2))
      images.append(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    rows[split] = (np.concatenate(images), {f: np.concatenate(v) for f, v in labels.items()})
  counts = {'label': 100 if name == 'cifar100' else 10, 'coarse_label': 20}
  meta = {key: [f'{feature}_{i}'.encode() for i in range(counts[feature])] for feature, key in release.names.items()}
  (folder / release.meta).write_bytes(pickle.dumps(meta, protocol=2))
  tarball = root / os.path.basename(release.url)
  with tarfile.open(tarball, 'w:gz') as archive:
    archive.add(folder, arcname=release.folder)
  return folder, tarball, rows


def _md5(path):
  return hashlib.md5(path.read_bytes()).hexdigest()


def _check_records(name, data_dir, rows):
  """Record i of each split is row i of the source: image, labels, id; sizes and class counts."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  for split, (images, labels) in rows.items():
    source = tfds.data_source(name, data_dir=str(data_dir), split=split)
    assert len(source) == len(images)
    for i, record in enumerate(source.__getitems__(list(range(len(images))))):
      np.testing.assert_array_equal(record['image'], images[i])
      assert all(record[feature] == values[i] for feature, values in labels.items())
      assert record['id'] == f'{split}_{i:05d}'.encode()
  info = tfds.builder(name, data_dir=str(data_dir)).info
  assert info.features['label'].num_classes == (100 if name == 'cifar100' else 10)
  assert ('coarse_label' in info.features) == (name == 'cifar100')


@pytest.fixture(name='server')
def _server(tmp_path):
  """An HTTP server on 127.0.0.1 over tmp_path/served."""
  served = tmp_path / 'served'
  served.mkdir()

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      del args

    def do_GET(self):  # pylint: disable=invalid-name
      if self.path != '/cut.tar.gz':
        return super().do_GET()
      self.send_response(200)  # A connection that drops a third of the way through.
      self.send_header('Content-Length', '30000')
      self.end_headers()
      self.wfile.write(b'x' * 10000)
      self.wfile.flush()
      self.close_connection = True
      return None

  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(served)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield served, f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()
  httpd.server_close()


def test_a_served_tarball_becomes_the_catalog_dataset_in_canonical_order(tmp_path, server, monkeypatch):
  served, url = server
  _, tarball, rows = _release(tmp_path / 'src', 'cifar10')
  (served / tarball.name).write_bytes(tarball.read_bytes())
  data_dir = tmp_path / 'tfds'
  # Training's first use: the canonical URL (here the loopback server) and the release's MD5.
  monkeypatch.setitem(cifar.RELEASES, 'cifar10', cifar.RELEASES['cifar10'].__class__(
      **dict(vars(cifar.RELEASES['cifar10']), url=f'{url}/{tarball.name}', md5=_md5(tarball))))
  config = default.get_config().data
  config.name, config.data_dir, config.cache_dir = 'cifar10', str(data_dir), str(tmp_path / 'cache')
  prepare.ensure_prepared(config)
  _check_records('cifar10', data_dir, rows)
  assert sorted(os.listdir(data_dir)) == ['.cifar10.prepare.lock', 'cifar10', 'downloads']
  assert os.listdir(data_dir / 'downloads') == [tarball.name]  # Kept: a rerun of prepare does not download.
  loaded = data.load_dataset(config)  # What training reads, by the real name.
  np.testing.assert_array_equal(loaded.train_images, rows['train'][0])
  np.testing.assert_array_equal(loaded.test_labels, rows['test'][1]['label'])
  assert loaded.num_classes == 10 and data.describe(config).num_train == 15
  prepare.ensure_prepared(config)  # Prepared: nothing happens.
  # Offline: one line naming the command with --source.
  monkeypatch.setitem(cifar.RELEASES, 'cifar10', cifar.RELEASES['cifar10'].__class__(
      **dict(vars(cifar.RELEASES['cifar10']), url=f'{url}/missing.tar.gz')))
  config.data_dir = str(tmp_path / 'elsewhere')
  with pytest.raises(prepare.PrepareError) as error:
    prepare.ensure_prepared(config)
  message = str(error.value)
  assert '\n' not in message and 'cannot download' in message and 'HTTP 404' in message, repr(message)
  assert f'python -m rpat_jax.data.prepare cifar10 --data_dir={tmp_path / "elsewhere"} --source=PATH' in message
  assert not os.path.exists(tmp_path / 'elsewhere' / 'cifar10')
  assert os.listdir(tmp_path / 'elsewhere' / 'downloads') == []


def test_cifar100_from_a_folder_and_a_tarball_with_its_coarse_labels(tmp_path):
  folder, tarball, rows = _release(tmp_path / 'src', 'cifar100')
  prepare.prepare('cifar100', str(tmp_path / 'a'), source=str(folder))  # torchvision's cifar-100-python.
  _check_records('cifar100', tmp_path / 'a', rows)
  prepare.prepare('cifar100', str(tmp_path / 'b'), source=str(tarball), md5=_md5(tarball))
  _check_records('cifar100', tmp_path / 'b', rows)


def test_refusals_leave_nothing_a_run_would_take_for_a_dataset(tmp_path, server):
  served, url = server
  folder, tarball, _ = _release(tmp_path / 'src', 'cifar10')
  (served / 'c.tar.gz').write_bytes(tarball.read_bytes())
  data_dir = tmp_path / 'tfds'

  def refused(match, **kwargs):
    with pytest.raises(prepare.PrepareError, match=match) as error:
      prepare.prepare('cifar10', str(data_dir), progress=False, **kwargs)
    assert '\n' not in str(error.value)
    assert not data.dataset_available('cifar10', str(data_dir)) and not (data_dir / 'cifar10').exists()

  refused('has MD5 .*, not the expected c58f30108f718f92721af3b95e74349a', source=f'{url}/c.tar.gz')
  assert os.listdir(data_dir / 'downloads') == []  # The wrong download is gone.
  refused('has MD5', source=str(tarball))  # A local tarball is checked too.
  refused('the download of .*/cut.tar.gz stopped after 10000 of 30000 bytes', source=f'{url}/cut.tar.gz', md5='none')
  assert os.listdir(data_dir / 'downloads') == []  # The interrupted download is gone.
  cut = tmp_path / 'cut.tar.gz'
  cut.write_bytes(tarball.read_bytes()[:len(tarball.read_bytes()) // 2])
  refused('is not a complete cifar-10-batches-py tarball', source=str(cut), md5='none')
  (folder / 'data_batch_3').unlink()
  refused('is missing data_batch_3: not a complete cifar-10-batches-py folder', source=str(folder))
  (folder / 'data_batch_3').write_bytes(pickle.dumps({b'data': np.zeros((2, 5), np.uint8)}))
  refused(r'data_batch_3: its data is not uint8 \[N, 3072\]', source=str(folder))
  (folder / 'data_batch_3').write_bytes(b'cos\nsystem\n(S"true"\ntR.')  # A pickle that would run a command.
  refused('a global os.system, which a CIFAR pickle does not hold', source=str(folder))
  refused('no such file, folder or URL', source=str(tmp_path / 'none'))
  refused('not 32 hex digits', md5='abc', source=str(tarball))
  with pytest.raises(prepare.PrepareError, match="'svhn' cannot be prepared here; allowed: cifar10, cifar100"):
    prepare.prepare('svhn', str(data_dir))


def test_a_full_disk_fails_in_one_line_and_leaves_no_dataset(tmp_path):
  _, tarball, _ = _release(tmp_path / 'src', 'cifar10')
  limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  try:
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, limits[1]))  # Shards of 15 PNG images do not fit.
    with pytest.raises(prepare.PrepareError, match='writing cifar10 into .* failed: .*File too large') as error:
      prepare.prepare('cifar10', str(tmp_path / 'tfds'), source=str(tarball), md5='none')
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    signal.signal(signal.SIGXFSZ, handler)
  assert '\n' not in str(error.value)
  assert not data.dataset_available('cifar10', str(tmp_path / 'tfds'))
  assert [p for p in os.listdir(tmp_path / 'tfds') if not p.startswith('.')] in ([], ['cifar10'])
  assert not (tmp_path / 'tfds' / 'cifar10').exists() or os.listdir(tmp_path / 'tfds' / 'cifar10') == []


def test_a_second_process_waits_for_the_writer_then_finds_the_dataset(tmp_path):
  folder, _, rows = _release(tmp_path / 'src', 'cifar10')
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  code = ('import sys; from absl import logging; logging.set_verbosity("info"); '
          'from rpat_jax.data import prepare; print(prepare.prepare("cifar10", sys.argv[1], source=sys.argv[2]))')
  log = tmp_path / 'second.log'
  with prepare._one_writer(str(data_dir), 'cifar10'), open(log, 'w') as stderr:  # pylint: disable=protected-access
    second = subprocess.Popen([sys.executable, '-c', code, str(data_dir), str(folder)], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=stderr, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and 'Waiting for pid' not in log.read_text() and second.poll() is None:
      time.sleep(0.2)
    assert second.poll() is None and 'Waiting for pid' in log.read_text()  # Blocked while this one writes.
    prepare._write('cifar10', str(data_dir), str(folder))  # pylint: disable=protected-access
    assert f'pid {os.getpid()}' in (data_dir / '.cifar10.prepare.lock').read_text()
  out, _ = second.communicate(timeout=120)
  err = log.read_text()
  assert second.returncode == 0, err[-2000:]
  assert 'is prepared in' in err and 'already' in err and 'Prepared cifar10' not in err
  assert out.strip().endswith('cifar10/3.0.2')
  _check_records('cifar10', data_dir, rows)


def test_tfrecord_files_are_not_ignored_and_the_binary_errors_in_one_line(tmp_path, capsys, monkeypatch):
  folder, _, _ = _release(tmp_path / 'src', 'cifar10')
  where = prepare.prepare('cifar10', str(tmp_path / 'tfds'), source=str(folder))
  info_path = os.path.join(where, 'dataset_info.json')
  info = json.loads(open(info_path).read())
  info['fileFormat'] = 'tfrecord'  # What tfds.load leaves: the same dataset in TFRecord files.
  with open(info_path, 'w') as f:
    f.write(json.dumps(info))
  config = default.get_config().data
  config.name, config.data_dir = 'cifar10', str(tmp_path / 'tfds')
  assert not data.dataset_available('cifar10', config.data_dir)
  expected = (r'is in TFRecord files .*`python -m rpat_jax.data.prepare cifar10 --data_dir=.* '
              r'--convert_tfrecord=OTHER_DIR` \(reads .*/cifar10/3\.0\.2 with TensorFlow\)')
  with pytest.raises(data.DatasetNotFoundError, match=expected) as error:
    prepare.ensure_prepared(config)
  try:
    import tensorflow  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError:  # The conversion reads TFRecords through TensorFlow, which the package does not need.
    with pytest.raises(prepare.PrepareError, match='reading TFRecord files needs TensorFlow'):
      prepare.convert_tfrecord('cifar10', config.data_dir, str(tmp_path / 'converted'))
  message = str(error.value)
  assert '\n' not in message and 'python -m rpat_jax.data.prepare cifar10 --data_dir=OTHER_DIR' in message
  with pytest.raises(prepare.PrepareError, match='is in TFRecord files'):  # Not a silent no-op over them.
    prepare.prepare('cifar10', config.data_dir, source=str(folder))
  capsys.readouterr()
  for argv, expected in ((['prepare', 'svhn'], "'svhn' cannot be prepared here; allowed: cifar10, cifar100"),
                         (['prepare'], 'give one dataset name (cifar10, cifar100)'),
                         (['prepare', 'cifar10', '--md5=xyz'], '--md5=xyz is not 32 hex digits or none')):
    flag_values = flags.FlagValues()
    holders = prepare.define_flags(flag_values)
    monkeypatch.setattr(sys, 'argv', argv)
    positional = flag_values(argv + [f'--data_dir={tmp_path / "cli"}'])
    with pytest.raises(SystemExit) as exit_info:
      prepare.main(positional, holders)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('rpat_jax.data.prepare: error: ') and expected in lines[0], lines
