"""The report: its arithmetic, the RPAT-over-base pairing, means over seeds, every file it writes, and its
errors, on run directories written here (config.json, metrics.jsonl, eval/results.json)."""

import csv
import io
import json
import sys

import numpy as np
import pytest
from absl import flags

from rpat_jax import report
from rpat_jax.run import saved_config
from rpat_jax.report import __main__ as binary
from rpat_jax.report import figures

PNG = b'\x89PNG\r\n\x1a\n'


def _config(seed=0, rpat=True, width=16, config_file='smoke', words='', beta=6.0):
  import importlib  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(f'configs.{config_file}')
  config = module.get_config(words or None)
  config.seed, config.rpat.enabled, config.beta = seed, rpat, beta  # beta: another setting, unused by PGD-AT.
  if config.model.name == 'small_cnn':
    config.model.width = width
  return config


def _run(root, name, config, clean=None, aa=None, pgd20=None, epochs=3, step=None, n_examples=512,
         checkpoint='last', perception=None):
  """A run directory as training and evaluation leave it."""
  workdir = root / name
  workdir.mkdir()
  saved_config.write(config, str(workdir))
  rows = [{'epoch': e, 'step': 20 * e, 'lr': 0.1 / e, 'train_loss': 2.0 / e, 'train_acc': 0.1 * e,
           'test_clean_acc': 0.2 * e, 'test_pgd_acc': 0.1 * e} for e in range(1, epochs + 1)]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  if clean is not None:
    (workdir / 'eval').mkdir()
    results = {'clean_acc': clean, 'pgd20_acc': pgd20 if pgd20 is not None else aa + 0.01, 'aa_acc': aa,
               'cw20_acc': aa, 'mean': -1.0, 'nrr': -1.0,  # Recomputed by the report, never read.
               'n_examples': n_examples, 'checkpoint': checkpoint, 'checkpoint_step': step or epochs,
               'aa_version': 'standard', 'ema': False, 'seed': 0, 'dtype': 'float32', 'nan_count': 0}
    (workdir / 'eval' / 'results.json').write_text(json.dumps(results))
  if perception is not None:
    (workdir / 'eval' / 'perception_pgd.json').write_text(json.dumps(perception))
  return str(workdir)


def _perception_result():
  """A real diagnostic: a linear logit function (tests/perception_test.py checks its closed form)."""
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from rpat_jax import perception  # pylint: disable=import-outside-toplevel
  weights = jax.random.normal(jax.random.key(0), (4 * 4 * 3, 10))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (16, 4, 4, 3)))
  linear = lambda images: images.reshape(images.shape[0], -1) @ weights
  y = np.asarray(linear(x).argmax(-1))
  threat = ml_collections.ConfigDict({'norm': 'linf', 'eps': 8 / 255, 'step_size': 2 / 255})
  result = perception.diagnose(linear, x, y, threat, kind='pgd', batch_size=8)
  result.update(checkpoint='last', checkpoint_step=3)
  return json.loads(json.dumps(result))


def test_mean_nrr_and_budget_names():
  mean, nrr = report.mean_and_nrr(0.8263, 0.51)
  assert round(100 * mean, 3) == 66.815 and round(100 * nrr, 3) == 63.072  # The paper's RPAT++ row.
  assert report.mean_and_nrr(0.0, 0.0) == (0.0, 0.0)
  assert report.fraction_of_255(8 / 255) == '8/255' and report.fraction_of_255(0.5) == '0.5'
  # The paper's points are found by these names: the package's own configs must produce them.
  named = {(report.architecture(saved_config.flatten(_config(config_file=f).to_dict())), f) for f in ('prn18', 'wrn')}
  assert named == {('PreActResNet-18', 'prn18'), ('WideResNet-34-10', 'wrn')}
  from rpat_jax.config import threats  # pylint: disable=import-outside-toplevel
  l2 = saved_config.flatten(threats.resolve(_config(config_file='prn18', words='l2')).to_dict())
  assert report.threat(l2) == 'L2 128/255'
  published = figures.paper_points()
  assert 'arXiv 2508.02186' in published['source']
  settings = {(p['dataset'], p['architecture'], p['threat']) for p in published['points']}
  assert ('cifar10', 'PreActResNet-18', 'Linf 8/255') in settings and ('cifar10', 'WideResNet-34-10', 'Linf 8/255') \
      in settings and ('cifar100', 'PreActResNet-18', 'L2 128/255') in settings


def test_tables_pair_each_rpat_run_with_its_seed_and_write_every_file(tmp_path, monkeypatch):
  references = {}
  draw = figures.tradeoff
  def counted(rows, points, title):
    references[title] = len(points)
    return draw(rows, points, title)
  monkeypatch.setattr(figures, 'tradeoff', counted)
  root = tmp_path / 'runs'
  root.mkdir()
  dirs = [
      _run(root, 'base_s0', _config(0, False), clean=0.50, aa=0.25),
      _run(root, 'rpat_s0', _config(0, True), clean=0.54, aa=0.26, perception=_perception_result()),
      _run(root, 'base_s1', _config(1, False), clean=0.52, aa=0.23),
      _run(root, 'rpat_s1', _config(1, True), clean=0.55, aa=0.24),
      _run(root, 'wide_rpat', _config(0, True, width=8), clean=0.40, aa=0.20),  # No base of its width.
      _run(root, 'half_eval', _config(2, True, beta=3.0), clean=0.60, aa=0.30, n_examples=256),
      _run(root, 'half_base', _config(2, False, beta=3.0), clean=0.60, aa=0.30),  # Evaluated on other points.
      _run(root, 'stale', _config(3, False, beta=4.0), clean=0.5, aa=0.2, epochs=5, step=3),
      _run(root, 'untested', _config(4, False)),
      _run(root, 'prn', _config(0, True, config_file='prn18'), clean=0.80, aa=0.50),
      # RPAT++ is ReBAT's recipe with RPAT's term: its base is ReBAT (the paper's SOTA rows).
      _run(root, 'rebat', _config(0, False, words='rebat'), clean=0.82, aa=0.50),
      _run(root, 'rpat_pp', _config(0, False, words='rpat_plus_plus'), clean=0.83, aa=0.51),
  ]
  written = binary.write_report(dirs, str(tmp_path / 'out'), robustbench=str(tmp_path / 'rb'))
  out = tmp_path / 'out'
  rows = {r['run']: r for r in csv.DictReader(io.StringIO((out / 'results.csv').read_text()))}
  # Percent with two decimals; Mean and NRR recomputed from Clean and AA.
  assert (rows['base_s0']['clean'], rows['base_s0']['aa'], rows['base_s0']['mean'], rows['base_s0']['nrr']) == \
      ('50.00', '25.00', '37.50', '33.33')
  assert rows['prn']['mean'] == '65.00' and rows['prn']['nrr'] == '61.54'
  # Each RPAT run against the same setting and seed with RPAT off.
  assert rows['rpat_s0']['base_run'] == 'base_s0' and rows['rpat_s1']['base_run'] == 'base_s1'
  assert (rows['rpat_s0']['delta_clean'], rows['rpat_s0']['delta_aa'], rows['rpat_s1']['delta_aa']) == \
      ('+4.00', '+1.00', '+1.00')
  assert rows['rpat_s0']['delta_nrr'] == f"{100 * (report.mean_and_nrr(.54, .26)[1] - 1 / 3):+.2f}"
  assert rows['wide_rpat']['base_run'] == '' and 'no base run' in rows['wide_rpat']['notes']
  assert rows['half_eval']['base_run'] == 'half_base' and rows['half_eval']['delta_aa'] == ''
  assert 'evaluated differently: n_examples 256 vs 512' in rows['half_eval']['notes']
  assert 'stale: evaluated at epoch 3, trained to 5' in rows['stale']['notes']
  assert rows['untested']['clean'] == '' and 'not evaluated' in rows['untested']['notes']
  assert rows['base_s0']['base_run'] == '' and rows['base_s0']['delta_aa'] == ''
  assert rows['rpat_pp']['base_run'] == 'rebat' and rows['rpat_pp']['delta_clean'] == '+1.00'
  assert rows['rebat']['base_run'] == ''
  markdown = (out / 'results.md').read_text()
  # Over seeds: (50, 52) -> 51.00 ± 1.41; RPAT's per-seed AA change (+1, +1) -> +1.00 ± 0.00, an interval of
  # width 0 (which excludes 0).
  assert '| 51.00 ± 1.41 |' in markdown and '| +1.00 ± 0.00 [+1.00, +1.00] * |' in markdown
  assert '| rpat_s0 | base_s0 | +4.00 | +1.00 | +1.00 |' in markdown  # Clean, PGD-20, AA.
  assert 'Perception diagnostic' in markdown and '| rpat_s0 | pgd_at + RPAT | pgd |' in markdown
  tex = (out / 'results.tex').read_text()
  assert r'\begin{tabular}' in tex and r'$\Delta$ over base\_s0' in tex and '(+4.00)' in tex
  assert tex.count(r'\\') == 1 + len(dirs) + 3  # Header, one line per run, a change line per RPAT pair.
  # Every figure: the curves, one trade-off plane per evaluated setting, the diagnostic across runs.
  pictures = sorted(p.name for p in out.glob('*.png'))
  assert pictures == sorted(['perception_pgd.png', 'training_curves.png',
                             'tradeoff_cifar10_preactresnet_18_linf_8_255.png',
                             'tradeoff_synthetic_smallcnn_16_linf_8_255.png',
                             'tradeoff_synthetic_smallcnn_8_linf_8_255.png'])
  # The paper's points mark the PreActResNet-18 CIFAR-10 Linf plane only (11 methods on the poster).
  assert references == {'cifar10, PreActResNet-18, Linf 8/255': 11, 'synthetic, SmallCNN-16, Linf 8/255': 0,
                        'synthetic, SmallCNN-8, Linf 8/255': 0}
  assert all((out / name).read_bytes()[:8] == PNG for name in pictures)
  entry = json.loads((tmp_path / 'rb' / 'cifar10' / 'Linf' / 'prn.json').read_text())
  assert {k: entry[k] for k in ('dataset', 'architecture', 'eps', 'clean_acc', 'autoattack_acc',
                                'number_forward_passes', 'additional_data')} == {
      'dataset': 'cifar10', 'architecture': 'PreActResNet-18', 'eps': '8/255', 'clean_acc': '80.00',
      'autoattack_acc': '50.00', 'number_forward_passes': 1, 'additional_data': False}
  assert entry['footnote'] == 'AutoAttack on the first 512 test points, not the full test set'
  assert not (tmp_path / 'rb' / 'synthetic' / 'Linf' / 'untested.json').exists()
  assert len(written) == 3 + len(pictures) + 11  # Eleven evaluated runs in RobustBench's shape.


def test_the_binary_refuses_in_one_line(tmp_path, capsys, monkeypatch):
  (tmp_path / 'empty').mkdir()
  for argv, expected in ((['report', str(tmp_path / 'empty')], 'has no config.json: is it a training run?'),
                         (['report', str(tmp_path / 'none')], 'none: no such run directory'),
                         (['report'], 'give the run directories to report')):
    flag_values = flags.FlagValues()
    holders = binary.define_flags(flag_values)
    monkeypatch.setattr(sys, 'argv', argv)
    flag_values(argv + [f'--out={tmp_path / "out"}'])
    with pytest.raises(SystemExit) as exit_info:
      binary.main(argv, holders)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def _seed_run(root, name, config, count, evaluated):
  """A run trained with seeds=count from `config.seed` as training and evaluation leave it: metrics rows per
  (epoch, seed), and each evaluated seed's results in eval/seed_<s>/ (evaluated: seed -> (clean, aa))."""
  workdir = root / name
  workdir.mkdir()
  config.seeds = count
  saved_config.write(config, str(workdir))
  trained = range(config.seed, config.seed + count)
  rows = [{'epoch': e, 'seed': s, 'step': 20 * e, 'lr': 0.1, 'train_loss': 2.0 / e + s, 'train_acc': 0.1 * e,
           'test_clean_acc': 0.2, 'test_pgd_acc': 0.1} for e in (1, 2, 3) for s in trained]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  for seed, (clean, aa) in evaluated.items():
    (workdir / 'eval' / f'seed_{seed}').mkdir(parents=True)
    results = {'clean_acc': clean, 'pgd20_acc': aa + 0.01, 'aa_acc': aa, 'cw20_acc': aa, 'n_examples': 512,
               'checkpoint': 'best', 'checkpoint_step': 3, 'aa_version': 'standard', 'ema': False, 'seed': 0,
               'dtype': 'float32', 'nan_count': 0, 'train_seed': seed}
    (workdir / 'eval' / f'seed_{seed}' / 'results.json').write_text(json.dumps(results))
  return str(workdir)


def test_t_quantiles_and_the_paired_interval():
  for df, expected in ((1, 12.706), (4, 2.776), (9, 2.262)):
    assert report.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
  mean, deviation, low, high = report.paired_interval([0.01, 0.02, 0.04])
  half = 4.302653 * np.std([1, 2, 4], ddof=1) / np.sqrt(3) / 100  # t(0.975, 2) = 4.302653.
  assert (mean, deviation) == pytest.approx((0.07 / 3, np.std([0.01, 0.02, 0.04], ddof=1)))
  assert (low, high) == pytest.approx((0.07 / 3 - half, 0.07 / 3 + half))


def test_a_k_seed_run_is_a_run_per_seed_paired_with_its_bases_and_averaged(tmp_path):
  root = tmp_path / 'runs'
  root.mkdir()
  # RPAT over seeds 0-2 in one run; its bases: seeds 0-1 in one run and seed 2 alone. Per-seed changes:
  # Clean +2, +3, +4 and AA +1, +2, +4 percentage points.
  dirs = [_seed_run(root, 'rpat', _config(0, True), 3, {0: (0.52, 0.26), 1: (0.55, 0.27), 2: (0.58, 0.31)}),
          _seed_run(root, 'base', _config(0, False), 2, {0: (0.50, 0.25), 1: (0.52, 0.25)}),
          _run(root, 'base_s2', _config(2, False), clean=0.54, aa=0.27, checkpoint='best', step=3)]
  runs = report.load_runs(dirs)
  assert [run.name for run in runs] == ['rpat/seed_0', 'rpat/seed_1', 'rpat/seed_2', 'base/seed_0', 'base/seed_1',
                                        'base_s2']
  assert [run.config['seed'] for run in runs] == [0, 1, 2, 0, 1, 2] and {run.config['seeds'] for run in runs} == {1}
  assert {row['seed'] for row in runs[1].metrics} == {1} and [row['epoch'] for row in runs[1].metrics] == [1, 2, 3]
  binary.write_report(dirs, str(tmp_path / 'out'))
  out = tmp_path / 'out'
  rows = {r['run']: r for r in csv.DictReader(io.StringIO((out / 'results.csv').read_text()))}
  assert [rows[f'rpat/seed_{s}']['base_run'] for s in range(3)] == ['base/seed_0', 'base/seed_1', 'base_s2']
  assert [rows[f'rpat/seed_{s}']['delta_aa'] for s in range(3)] == ['+1.00', '+2.00', '+4.00']
  assert rows['rpat/seed_2']['seed'] == '2' and rows['rpat/seed_2']['epochs'] == '3'
  markdown = (out / 'results.md').read_text()
  assert '95% confidence interval of the mean change, Student t with n − 1 degrees of freedom' in markdown
  line = next(line for line in markdown.splitlines() if '| rpat/seed_0, rpat/seed_1, rpat/seed_2 |' in line)
  cells = [cell.strip() for cell in line.strip('|').split('|')]
  t = 4.302653  # t(0.975, 2)
  def expected(changes, mark):
    mean, deviation = np.mean(changes), np.std(changes, ddof=1)
    half = t * deviation / np.sqrt(3)
    return f'{mean:+.2f} ± {deviation:.2f} [{mean - half:+.2f}, {mean + half:+.2f}]{mark}'
  assert cells[7] == f"{np.mean([52, 55, 58]):.2f} ± {np.std([52, 55, 58], ddof=1):.2f}"  # Clean over seeds.
  assert cells[12] == expected([2, 3, 4], ' *') == '+3.00 ± 1.00 [+0.52, +5.48] *'  # Excludes 0.
  assert cells[13] == expected([1, 2, 4], '') == '+2.33 ± 1.53 [-1.46, +6.13]'  # Does not.
  assert cells[15] == '0, 1, 2'
  base_line = next(line for line in markdown.splitlines() if '| base/seed_0, base/seed_1, base_s2 |' in line)
  assert '50.00 ± 1.00' not in base_line and f"{np.mean([50, 52, 54]):.2f} ± 2.00" in base_line
  assert (out / 'training_curves.png').read_bytes()[:8] == PNG


def test_a_k_seed_run_with_results_of_another_seed_is_refused(tmp_path):
  root = tmp_path / 'runs'
  root.mkdir()
  workdir = _seed_run(root, 'rpat', _config(0, True), 2, {0: (0.5, 0.25)})
  moved = tmp_path / 'runs' / 'rpat' / 'eval' / 'seed_1'
  (tmp_path / 'runs' / 'rpat' / 'eval' / 'seed_0').rename(moved)
  with pytest.raises(report.ReportError, match='seed_1: its results are of seed 0, not 1'):
    report.load_runs([workdir])


def test_the_seeds_of_a_k_seed_run_share_a_colour_and_one_legend_entry():
  colours, labels = figures._colours_and_labels(
      ['standard', 'pgdat/seed_0', 'pgdat/seed_1', 'rpat/seed_0', 'rpat/seed_1', 'solo/seed_3'])
  assert colours[1] == colours[2] and colours[3] == colours[4]
  assert len({colours[0], colours[1], colours[3], colours[5]}) == 4
  assert labels == ['standard', 'pgdat (2 seeds)', '_nolegend_', 'rpat (2 seeds)', '_nolegend_', 'solo/seed_3']
