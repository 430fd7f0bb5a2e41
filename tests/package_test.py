"""The package: binaries and libraries import side by side without defining flags, it installs as a
wheel with every subpackage, and the configs work from any directory."""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT

BINARIES = ('rpat_jax.main', 'rpat_jax.evaluate.__main__', 'rpat_jax.convert.__main__', 'rpat_jax.bench.__main__',
            'rpat_jax.data.tiny_imagenet', 'rpat_jax.data.prepare', 'rpat_jax.perception.__main__',
            'rpat_jax.report.__main__')


def test_every_module_imports_without_defining_flags():
  """Importing every module, the binaries included, defines no command-line flag: only `python -m` does."""
  code = f'''
import pkgutil, rpat_jax
from absl import flags
names = [m.name for m in pkgutil.walk_packages(rpat_jax.__path__, 'rpat_jax.')
         if '.bench.torch' not in m.name]  # The PyTorch twins need torch, which the package does not.
names += {list(BINARIES)!r}
for name in names:
  __import__(name)
import rpat_jax.main, rpat_jax.evaluate, rpat_jax.convert, rpat_jax.bench.__main__
ours = sorted(name for module, defined in flags.FLAGS.flags_by_module_dict().items() if 'rpat_jax' in module
              for name in map(str, defined))
print(len(names), ours + sorted(set(['config', 'workdir', 'distributed', 'model', 'source']) & set(flags.FLAGS)))
'''
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr[-3000:]
  count, defined = result.stdout.strip().split(' ', 1)
  assert int(count) > 30 and defined == '[]', result.stdout


def test_the_wheel_holds_every_subpackage_and_runs_from_another_directory(tmp_path):
  """`pip install .` builds this wheel; installed, `python -m rpat_jax.main --config=<path>/configs/...`
  works from any directory (the config files import the defaults from the package)."""
  pytest.importorskip('setuptools')
  source = tmp_path / 'source'
  shutil.copytree(os.path.join(ROOT, 'rpat_jax'), source / 'rpat_jax', ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md', 'requirements.txt'):
    shutil.copy(os.path.join(ROOT, name), source / name)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w',
                  str(tmp_path / 'dist'), str(source)], check=True, capture_output=True, timeout=300)
  wheel, = glob.glob(str(tmp_path / 'dist' / 'rpat_jax-*.whl'))
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    archive.extractall(tmp_path / 'site')
    metadata = archive.read(next(n for n in names if n.endswith('METADATA'))).decode()
  packages = {os.path.dirname(name) for name in names if name.endswith('.py')}
  assert packages == {'rpat_jax', 'rpat_jax/aot', 'rpat_jax/autoattack', 'rpat_jax/bench', 'rpat_jax/config', 'rpat_jax/convert',
                      'rpat_jax/cpu', 'rpat_jax/data', 'rpat_jax/evaluate', 'rpat_jax/models', 'rpat_jax/perception',
                      'rpat_jax/report', 'rpat_jax/run', 'rpat_jax/sharding'}
  assert 'rpat_jax/report/paper_points.json' in names  # Package data: the report's reference points.
  assert 'Requires-Dist: jax==' in metadata and 'Requires-Dist: ml-collections==' in metadata
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'rpat_jax.main', f'--config={os.path.join(ROOT, "configs", "smoke.py")}',
       f'--workdir={elsewhere / "run"}', '--config.attack.eps=8.0'],
      cwd=elsewhere, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site')))
  errors = [line for line in result.stderr.splitlines() if line.startswith('rpat_jax: error:')]
  assert result.returncode == 2 and len(errors) == 1 and 'attack.eps=8.0' in errors[0], result.stderr[-3000:]
