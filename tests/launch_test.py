"""The launch scripts' dry runs (RPAT_DRY_RUN=1): the lines they print are what a pod slice or a SLURM job
would run, so they are checked here, where no TPU or cluster is; and every script in launch/ parses."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch'
TPU_POD = str(LAUNCH / 'tpu_pod.sh')
SLURM = str(LAUNCH / 'slurm.sbatch')
TPU_ENV = {'RPAT_DRY_RUN': '1', 'TPU_NAME': 'my-tpu', 'ZONE': 'us-west4-a', 'ACCELERATOR_TYPE': 'v5litepod-16'}
COMMAND = ['python', '-m', 'rpat_jax.main', '--config=configs/wrn.py', '--config.note=a b']
# What every worker or node runs for COMMAND, pasted into a shell.
EXPECTED = r'python -m rpat_jax.main --config=configs/wrn.py --config.note=a\ b --distributed=on --init_timeout=300'


def _run(script, args, env=None, cwd=ROOT):
  """Runs a script with bash in a clean environment (plus `env`): (exit status, stdout lines, stderr lines)."""
  base = {name: os.environ[name] for name in ('PATH', 'HOME') if name in os.environ}
  result = subprocess.run(['bash', script, *args], env={**base, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, check=False)
  return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


def _workers(lines):
  return [line for line in lines if line.startswith('worker ')]


@pytest.mark.parametrize('accelerator, hosts, chips', [
    ('v5litepod-16', 4, 4), ('v4-32', 4, 4), ('v5p-16', 2, 4), ('v5litepod-8', 1, 8), ('v3-32', 4, 4),
    ('v3-8', 1, 4), ('v4-8', 1, 4), ('v5e-256', 64, 4), ('v6e-1', 1, 1)])
def test_tpu_dry_run_prints_one_line_per_worker(accelerator, hosts, chips):
  status, out, err = _run(TPU_POD, COMMAND, {**TPU_ENV, 'ACCELERATOR_TYPE': accelerator})
  assert status == 0 and not err, err
  assert out[0] == ('gcloud compute tpus tpu-vm ssh my-tpu --zone=us-west4-a --worker=all --command="cd ~/rpat_jax'
                    r' && launch/tpu_pod.sh python -m rpat_jax.main --config=configs/wrn.py --config.note=a\\ b"')
  workers = 'worker' if hosts == 1 else 'workers'
  assert out[1].startswith(f'{accelerator}: {hosts} {workers} x {chips} chip') and 'TPU metadata' in out[1], out
  assert _workers(out) == [f'worker {i}: {EXPECTED}' for i in range(hosts)]
  assert len(out) == hosts + 2


def test_tpu_dry_run_honours_timeout_and_repo_dir():
  env = {**TPU_ENV, 'RPAT_INIT_TIMEOUT': '900', 'RPAT_REPO_DIR': '/srv/rpat jax'}
  status, out, _ = _run(TPU_POD, COMMAND, env)
  assert status == 0
  assert r'--command="cd /srv/rpat\\ jax && RPAT_INIT_TIMEOUT=900 launch/tpu_pod.sh python' in out[0], out[0]
  assert _workers(out)[0] == 'worker 0: ' + EXPECTED.replace('=300', '=900')


def test_tpu_dry_run_lines_run_as_printed(tmp_path):
  """The gcloud line, pasted into a shell whose `gcloud` runs --command on this machine (HOME holding the
  repository as ~/rpat_jax), runs exactly the printed worker command, and so does that line itself."""
  awkward = [sys.executable, '-c', 'import json, sys; print(json.dumps(sys.argv[1:]))', '--note=a b', "it's",
             'a"$HOME`x`\\y', '']
  status, out, _ = _run(TPU_POD, awkward, TPU_ENV)
  assert status == 0
  (tmp_path / 'rpat_jax').symlink_to(ROOT)
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  gcloud = bin_dir / 'gcloud'
  gcloud.write_text('#!/usr/bin/env bash\nexec bash -c "${@: -1}"\n')  # Drops "--command=" below.
  gcloud.chmod(0o755)
  pasted = out[0].replace('--command="', '"', 1)
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'HOME': str(tmp_path)}
  via_gcloud = subprocess.run(['bash', '-c', pasted], env=env, capture_output=True, text=True, check=True)
  worker = _workers(out)[0].removeprefix('worker 0: ')
  direct = subprocess.run(['bash', '-c', worker], env=env, capture_output=True, text=True, check=True)
  expected = awkward[3:] + ['--distributed=on', '--init_timeout=300']
  assert json.loads(via_gcloud.stdout) == json.loads(direct.stdout) == expected
  assert shlex.split(worker)[3:] == expected


@pytest.mark.parametrize('missing', ['TPU_NAME', 'ZONE', 'ACCELERATOR_TYPE'])
def test_tpu_dry_run_names_a_missing_variable(missing):
  env = {name: value for name, value in TPU_ENV.items() if name != missing}
  status, out, err = _run(TPU_POD, COMMAND, env)
  assert status == 2 and not out
  assert len(err) == 1 and f'needs {missing}' in err[0], err


@pytest.mark.parametrize('accelerator', ['v5litepod', 'v4-12', 'v5litepod-18', 'v7-8', 'v4-0', 'tpu-v4-32'])
def test_tpu_dry_run_rejects_a_bad_accelerator_type(accelerator):
  status, out, err = _run(TPU_POD, COMMAND, {**TPU_ENV, 'ACCELERATOR_TYPE': accelerator})
  assert status == 2 and not out
  assert len(err) == 1 and f'ACCELERATOR_TYPE={accelerator} ' in err[0] and 'v5litepod-N' in err[0], err


@pytest.mark.parametrize('script, env', [(TPU_POD, TPU_ENV), (TPU_POD, {}), (SLURM, {'RPAT_DRY_RUN': '1'}),
                                         (SLURM, {})], ids=['tpu_pod-dry', 'tpu_pod', 'slurm-dry', 'slurm'])
def test_no_command_prints_usage(script, env):
  """The usage is the script's whole header comment (its `sed` range follows the header's length)."""
  lines = pathlib.Path(script).read_text().splitlines()[1:]
  header = lines[:next(i for i, line in enumerate(lines) if not line.startswith('#') or line.startswith('#SBATCH'))]
  status, out, err = _run(script, [], env)
  assert status == 2 and not out
  assert err == header and any('RPAT_DRY_RUN=1' in line for line in err)


def test_tpu_pod_outside_dry_run_execs_the_command():
  status, out, err = _run(TPU_POD, [sys.executable, '-c', 'import sys; print(sys.argv[1:])', 'a b'],
                          {'RPAT_INIT_TIMEOUT': '7', 'TPU_NAME': 'ignored'})
  assert status == 0 and not err, err
  assert out == [str(['a b', '--distributed=on', '--init_timeout=7'])]


def test_slurm_dry_run_prints_one_line_per_node():
  status, out, err = _run(SLURM, COMMAND, {'RPAT_DRY_RUN': '1', 'RPAT_NODES': '3'})
  assert status == 0 and not err, err
  assert out[:2] == [r'sbatch --nodes=3 launch/slurm.sbatch python -m rpat_jax.main --config=configs/wrn.py'
                     r' --config.note=a\ b', f'srun --kill-on-bad-exit=1 {EXPECTED}']
  assert out[2:] == [f'node {i} (process {i} of 3): {EXPECTED}' for i in range(3)]


def test_slurm_dry_run_reads_the_allocation():
  status, out, _ = _run(SLURM, COMMAND, {'RPAT_DRY_RUN': '1', 'SLURM_NNODES': '2', 'RPAT_INIT_TIMEOUT': '60'})
  assert status == 0
  assert out[0].startswith('RPAT_INIT_TIMEOUT=60 sbatch --nodes=2 ')
  assert out[2:] == [f'node {i} (process {i} of 2): ' + EXPECTED.replace('=300', '=60') for i in range(2)]


@pytest.mark.parametrize('nodes, message', [(None, 'needs RPAT_NODES'), ('0', 'RPAT_NODES=0 is not a positive'),
                                            ('two', 'RPAT_NODES=two is not a positive'),
                                            ('-1', 'RPAT_NODES=-1 is not a positive')])
def test_slurm_dry_run_rejects_a_bad_node_count(nodes, message):
  env = {'RPAT_DRY_RUN': '1', **({} if nodes is None else {'RPAT_NODES': nodes})}
  status, out, err = _run(SLURM, COMMAND, env)
  assert status == 2 and not out
  assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize('script', sorted(path.name for path in LAUNCH.iterdir() if path.suffix in ('.sh', '.sbatch')))
def test_script_parses(script):
  subprocess.run(['bash', '-n', str(LAUNCH / script)], check=True)
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not on PATH')
  # Warnings and errors; shellcheck's notes (info, style) vary between its versions.
  result = subprocess.run(['shellcheck', '--shell=bash', '--severity=warning', str(LAUNCH / script)],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout
