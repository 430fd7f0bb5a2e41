"""Bad input to the command-line tools is one line and exit status 2, before anything is built: flags and
config files as parsed (`cli.parse_flags`), and each binary's own checks (its `main`, in this process)."""

import json
import os
import sys

import pytest
from absl import flags

from helpers import ROOT
from rpat_jax.run import cli
from rpat_jax import main as train_main
from rpat_jax.evaluate import __main__ as evaluate_main

SMOKE = os.path.join(ROOT, 'configs', 'smoke.py')


def _one_error_line(capsys, prog):
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), lines
  return lines[0]


def _parse(binary, argv, monkeypatch):
  flag_values = flags.FlagValues()
  holders = binary.define_flags(flag_values)
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads the --config.* overrides from sys.argv.
  cli.parse_flags(binary.PROG, argv, flag_values)
  return holders


@pytest.mark.parametrize('arguments, message', [
    (['--config=configs/none.py'], '--config=configs/none.py: no such config file'),
    ([f'--config={SMOKE}:smoke,fast'], "config argument 'fast' is unknown; allowed: smoke,"),
    ([f'--config={SMOKE}', '--config.nokey=1'], "--config.nokey=1: the config has no key 'nokey'"),
    ([f'--config={SMOKE}', '--config.model.depht=3'], "--config.model.depht=3: the config has no key 'depht'"),
    ([f'--config={SMOKE}', '--config.rpat.fused_forward=True'],
     "--config.rpat.fused_forward=True: the key 'rpat.fused_forward' is now 'passes.fused'"),
    ([f'--config={SMOKE}', '--config.rpat.batched_forwards=True'],
     "--config.rpat.batched_forwards=True: the key 'rpat.batched_forwards' is now 'passes.batched'"),
    ([f'--config={SMOKE}', '--config.epochs=ten'], '--config.epochs=ten'),
    ([f'--config={SMOKE}', '--epochs=3'], "Unknown command line flag 'epochs'"),
    ([f'--config={SMOKE}'], '--workdir must have a value'),
])
def test_flag_and_config_file_errors_are_one_line(arguments, message, capsys, monkeypatch, tmp_path):
  argv = ['rpat_jax'] + arguments + ([f'--workdir={tmp_path}'] if 'workdir' not in message else [])
  with pytest.raises(SystemExit) as exit_info:
    _parse(train_main, argv, monkeypatch)
  assert exit_info.value.code == 2
  assert message in _one_error_line(capsys, 'rpat_jax')


def test_a_config_file_that_raises_is_named(capsys, monkeypatch, tmp_path):
  (tmp_path / 'broken.py').write_text('def get_config():\n  raise RuntimeError("no such recipe")\n')
  with pytest.raises(SystemExit):
    _parse(train_main, ['rpat_jax', f'--config={tmp_path / "broken.py"}', f'--workdir={tmp_path}'], monkeypatch)
  assert f'--config={tmp_path / "broken.py"}: no such recipe' in _one_error_line(capsys, 'rpat_jax')


@pytest.mark.parametrize('overrides, message', [
    (['--config.optimizer.momentum=-0.9'], 'optimizer.momentum=-0.9'),
    (['--config.optimizer.weight_decay=-1'], 'optimizer.weight_decay=-1'),
    (['--config.data.synthetic.num_test=0'], 'data.synthetic.num_test=0'),
    (['--config.checkpoint.every_minutes=-5'], 'checkpoint.every_minutes=-5'),
])
def test_bad_values_stop_training_before_anything_is_built(overrides, message, capsys, monkeypatch, tmp_path):
  workdir = tmp_path / 'run'
  holders = _parse(train_main, ['rpat_jax', f'--config={SMOKE}', f'--workdir={workdir}', *overrides], monkeypatch)
  with pytest.raises(SystemExit) as exit_info:
    train_main.main(['rpat_jax'], holders)
  assert exit_info.value.code == 2 and message in _one_error_line(capsys, 'rpat_jax')
  assert not workdir.exists()


@pytest.mark.parametrize('flag, message', [
    ('--checkpoint=abc', '--checkpoint=abc; allowed: best, last, or an epoch number'),
    ('--n_examples=-1', '--n_examples=-1; allowed: an integer >= 0'),
    ('--batch_size=0', '--batch_size=0; allowed: a positive integer'),
    ('--aa_options=[1]', '--aa_options must be a JSON object'),
    ('--aa_options={', '--aa_options is not JSON'),
    ('', 'does not exist'),
])
def test_evaluation_errors_are_one_line_and_create_nothing(flag, message, capsys, monkeypatch, tmp_path):
  workdir = tmp_path / 'no_run'
  argv = ['evaluate', f'--config={SMOKE}', f'--workdir={workdir}'] + ([flag] if flag else [])
  holders = _parse(evaluate_main, argv, monkeypatch)
  with pytest.raises(SystemExit) as exit_info:
    evaluate_main.main(['evaluate'], holders)
  assert exit_info.value.code == 2 and message in _one_error_line(capsys, 'rpat_jax.evaluate')
  assert not workdir.exists()


def test_evaluation_takes_the_runs_own_config_when_none_is_given(capsys, monkeypatch, tmp_path):
  from helpers import tiny_config  # pylint: disable=import-outside-toplevel
  from rpat_jax.config import validation  # pylint: disable=import-outside-toplevel
  from rpat_jax.run import saved_config  # pylint: disable=import-outside-toplevel
  from rpat_jax.config import threats  # pylint: disable=import-outside-toplevel
  saved_config.write(tiny_config(), tmp_path)
  recorded = threats.resolve(saved_config.read(tmp_path))
  validation.validate(recorded, device_count=1)
  assert saved_config.changed_keys(json.loads(saved_config.as_json(recorded)), tiny_config()) == []
  holders = _parse(evaluate_main, ['evaluate', f'--workdir={tmp_path / "no_run"}'], monkeypatch)
  with pytest.raises(SystemExit) as exit_info:
    evaluate_main.main(['evaluate'], holders)
  assert exit_info.value.code == 2
  assert 'no_run/config.json does not exist' in _one_error_line(capsys, 'rpat_jax.evaluate')
