"""Config files resolve to the documented settings, and each bad value gets its one-line error."""

import json
import os
import subprocess
import sys

import pytest

from configs import cpu_study, default, prn18, resnet18, smoke, wrn
from rpat_jax.config import defaults
from rpat_jax.config import threats
from rpat_jax.config import validation
from rpat_jax.run import saved_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resolved(module=smoke, arg=None, **overrides):
  config = threats.resolve(module.get_config(arg) if module is not default else module.get_config())
  config.update_from_flattened_dict(overrides)
  return config


def test_model_configs_differ_only_in_the_model():
  base = threats.resolve(default.get_config()).to_dict()
  for module, name in ((prn18, 'preact_resnet18'), (resnet18, 'resnet18_bottleneck'), (wrn, 'wide_resnet')):
    config = threats.resolve(module.get_config()).to_dict()
    assert config['model']['name'] == name
    assert {k: v for k, v in config.items() if k != 'model'} == {k: v for k, v in base.items() if k != 'model'}
  assert wrn.get_config().model.depth == 34 and wrn.get_config().model.widen_factor == 10


def test_defaults_follow_the_official_benchmark_recipe():
  config = threats.resolve(prn18.get_config())
  assert (config.epochs, config.batch_size, config.seed) == (110, 128, 0)
  assert (config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
  assert tuple(config.schedule.milestones) == (100, 105) and config.schedule.factor == 0.1
  assert (config.attack.norm, config.attack.eps, config.attack.step_size, config.attack.steps) == (
      'linf', 8 / 255, 2 / 255, 10)
  assert config.attack.bn_mode == 'eval'
  assert config.rpat.enabled and config.rpat.lam == 1.0 and tuple(config.rpat.rates) == (0.5,)
  assert config.rpat.form == 'code' and not config.passes.fused and not config.rpat.detach_target


def test_the_cpu_study_differs_from_the_official_recipe_only_where_its_docstring_says():
  """docs/results.md: a small CNN on cifar10_jpeg, PGD-5, 5 epochs; RPAT's lam and rate are the defaults."""
  study = threats.resolve(cpu_study.get_config('pgd_at,rpat')).to_dict()
  official = threats.resolve(prn18.get_config('pgd_at,rpat')).to_dict()
  differ = {f'{group}.{key}' for group, values in study.items() if isinstance(values, dict)
            for key, value in values.items() if official[group][key] != value}
  differ |= {key for key, value in study.items() if not isinstance(value, dict) and official[key] != value}
  assert differ == {'model.name', 'model.width', 'data.name', 'epochs', 'schedule.milestones', 'attack.steps',
                    'eval.num_examples'}
  assert (study['rpat']['lam'], study['rpat']['rates'], study['attack']['steps']) == (1.0, (0.5,), 5)
  for word in ('standard', 'noise'):  # The references of the diagnostic: the same model and budget.
    reference = cpu_study.get_config(word)
    assert reference.method == word and not reference.rpat.enabled and reference.epochs == 5


def test_norm_alone_selects_its_threat_budget():
  config = prn18.get_config()
  with config.unlocked():
    config.attack.norm = 'L2'
  config = threats.resolve(config)
  assert (config.attack.norm, config.attack.eps, config.attack.step_size) == ('l2', 128 / 255, 15 / 255)
  config = prn18.get_config()
  with config.unlocked():
    config.attack.norm, config.attack.eps = 'l2', 0.25
  assert threats.resolve(config).attack.eps == 0.25  # An explicit value wins.


def test_smoke_argument_shrinks_any_config_and_unknown_argument_fails():
  config = threats.resolve(wrn.get_config('smoke'))
  assert config.data.name == 'synthetic' and config.epochs == 1 and config.model.name == 'wide_resnet'
  validation.validate(config, device_count=1)
  with pytest.raises(ValueError, match='allowed: smoke, cifar10, cifar100'):
    prn18.get_config('tiny')


def test_config_strings_select_one_table_row():
  config = threats.resolve(prn18.get_config('cifar100,trades,no_rpat,l2'))
  assert (config.data.name, config.method, config.rpat.enabled, config.attack.norm) == ('cifar100', 'trades',
                                                                                       False, 'l2')
  assert (config.attack.eps, config.attack.step_size) == (128 / 255, 15 / 255)
  assert config.model.name == 'preact_resnet18' and config.beta == 6.0
  config = threats.resolve(resnet18.get_config('tiny_imagenet,pgd_at'))
  assert (config.data.name, config.model.stem_stride, config.model.name) == ('tiny_imagenet', 2,
                                                                             'resnet18_bottleneck')
  config = threats.resolve(wrn.get_config('mart,rpat,smoke'))
  assert (config.method, config.rpat.enabled, config.data.name, config.attack.eps) == ('mart', True, 'synthetic',
                                                                                       8 / 255)
  validation.validate(config, device_count=1)


def test_smoke_config_is_valid():
  validation.validate(_resolved(), device_count=1)


@pytest.mark.parametrize('overrides,key', [
    ({'method': 'fgsm_at'}, 'method='),
    ({'beta': -1.0}, 'beta='),
    ({'consistency.lam': -1.0}, 'consistency.lam='),
    ({'consistency.temperature': 0.0}, 'consistency.temperature='),
    ({'method': 'trades', 'passes.fused': True}, 'passes.fused='),
    ({'model.name': 'resnet50'}, 'model.name='),
    ({'model.dtype': 'float16'}, 'model.dtype='),
    ({'data.name': 'no_such_dataset', 'data.data_dir': '/nonexistent'}, 'data.name='),
    ({'attack.norm': 'l1'}, 'attack.norm='),
    ({'attack.eps': 0.0}, 'attack.eps='),
    ({'attack.eps': -0.1}, 'attack.eps='),
    ({'attack.eps': 8.0}, 'pixel units'),
    ({'attack.step_size': 0.0}, 'attack.step_size='),
    ({'attack.step_size': 2.0}, 'pixel units'),
    ({'attack.norm': 'l2', 'attack.eps': 128.0}, 'pixel units'),
    ({'attack.steps': 0}, 'attack.steps='),
    ({'rpat.rates': (0.5, 1.0)}, 'rpat.rates'),
    ({'rpat.rates': (0.0,)}, 'rpat.rates'),
    ({'rpat.rates': ()}, 'rpat.rates'),
    ({'rpat.lam': -1.0}, 'rpat.lam='),
    ({'rpat.form': 'seed'}, 'rpat.form='),
    ({'batch_size': 0}, 'batch_size='),
    ({'epochs': 0}, 'epochs='),
    ({'schedule.name': 'cosine'}, 'schedule.name='),
    ({'attack.bn_mode': 'frozen'}, 'attack.bn_mode='),
    ({'optimizer.momentum': -0.9}, 'optimizer.momentum='),
    ({'optimizer.weight_decay': -5e-4}, 'optimizer.weight_decay='),
    ({'schedule.milestones': (105, 100)}, 'schedule.milestones='),
    ({'schedule.milestones': (0,)}, 'schedule.milestones='),
    ({'data.synthetic.num_test': 0}, 'data.synthetic.num_test='),
    ({'data.synthetic.num_classes': 1}, 'data.synthetic.num_classes='),
    ({'checkpoint.every_minutes': -1.0}, 'checkpoint.every_minutes='),
    ({'log.every_steps': 0}, 'log.every_steps='),
])
def test_each_bad_value_names_its_key(overrides, key):
  config = _resolved(**overrides)
  with pytest.raises(validation.ConfigError, match=key.replace('.', r'\.')) as error:
    validation.validate(config, device_count=1)
  assert '\n' not in str(error.value)


def test_batch_size_must_divide_over_devices():
  with pytest.raises(validation.ConfigError, match='not divisible by the 3 devices'):
    validation.validate(_resolved(), device_count=3)


def test_cli_prints_one_line_and_exits_2_before_compiling(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'rpat_jax.main', '--config=configs/smoke.py', f'--workdir={tmp_path}',
       '--config.attack.eps=8.0'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('rpat_jax: error:')]
  assert len(errors) == 1 and 'attack.eps=8.0' in errors[0] and '8/255' in errors[0]
  assert not os.path.exists(tmp_path / 'checkpoints')  # Nothing was built.


@pytest.mark.parametrize('old, new', sorted(defaults.MOVED_KEYS.items()))
def test_a_moved_key_set_by_a_config_file_is_refused_in_one_line_naming_its_new_place(old, new):
  """What an old config file's `config.rpat.fused_forward = True` does (the command line: cli_test)."""
  config = _resolved()
  group, leaf = old.split('.')
  config[group][leaf] = True
  with pytest.raises(validation.ConfigError, match=f"the key '{old}' is now '{new}'"):
    validation.validate(config, device_count=1)


def test_a_run_recorded_with_the_old_keys_reads_and_resumes_with_the_new(tmp_path):
  config = _resolved(**{'passes.batched': True})
  saved_config.write(config, tmp_path)
  recorded = json.loads((tmp_path / 'config.json').read_text())
  recorded['rpat']['batched_forwards'] = recorded.pop('passes')['batched']
  recorded['rpat']['fused_forward'] = False
  (tmp_path / 'config.json').write_text(json.dumps(recorded))
  assert saved_config.check_resume(config, tmp_path)  # No change refused: the same run.
  read = saved_config.read(tmp_path)
  assert read.passes.batched is True and read.passes.fused is False and 'fused_forward' not in read.rpat
  with pytest.raises(saved_config.ConfigChangeError, match='passes.batched: true -> false'):
    saved_config.check_resume(_resolved(), tmp_path)


def test_a_config_file_importing_a_moved_module_still_works():
  with pytest.warns(DeprecationWarning, match='rpat_jax.defaults is now rpat_jax.config.defaults'):
    from rpat_jax import defaults as old  # pylint: disable=import-outside-toplevel
  assert old is defaults
