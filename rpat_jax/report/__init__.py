"""Many training runs in one table, as the paper's: a row per run, the change RPAT makes over its base run,
means over seeds (the tables themselves: `report.tables`; the pictures: `report.figures`).

A run is read from its own files: `config.json` (what was trained), `metrics.jsonl` (the per-epoch
record) and `eval/results.json` (`python -m rpat_jax.evaluate`); a run trained with `seeds=K` is K runs,
`<run>/seed_<s>`, each with its seed's metrics rows and `eval/seed_<s>/`. The accuracies come from the
evaluation only: a run without one has empty cells, never the training log's PGD-10 numbers in the PGD-20
column. Mean and NRR are recomputed here from Clean and AA (Mean = (C + A)/2, NRR = 2CA/(C + A)), so a table
cannot disagree with its own columns.
"""

import dataclasses
import json
import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rpat_jax.run import metrics_log
from rpat_jax.run import paths
from rpat_jax import perception
from rpat_jax.run import saved_config
from rpat_jax.config import threats

METRICS = ('clean', 'pgd20', 'aa', 'mean', 'nrr')
METRIC_NAMES = {'clean': 'Clean', 'pgd20': 'PGD-20', 'aa': 'AA', 'mean': 'Mean', 'nrr': 'NRR'}
# Keys that do not change what is trained: where it is logged, evaluated during training, checkpointed or
# cached, the attack's program form (the same computation), and how a K-seed run lays its seeds over the
# devices. Runs equal elsewhere are the same setting.
HOUSEKEEPING = ('eval.', 'log.', 'checkpoint.', 'data.data_dir', 'data.cache_dir', 'attack.unroll',
                'seed_sharding', 'seed_compute')
# What must match for two evaluations to be compared.
EVALUATION_KEYS = ('n_examples', 'aa_version', 'checkpoint', 'ema', 'seed', 'dtype')


class ReportError(ValueError):
  """A run directory that cannot be reported (named in the message)."""


@dataclasses.dataclass
class Run:
  """One training run's records, as read from its directory."""
  path: str
  name: str
  config: Dict[str, Any]  # Flattened: 'attack.eps' -> value, with the threat's defaults resolved.
  metrics: List[Dict[str, Any]]  # metrics.jsonl rows, one per epoch.
  results: Optional[Dict[str, Any]]  # eval/results.json, or None.
  perception: Dict[str, Dict[str, Any]]  # 'pgd' / 'random' -> eval/perception_<kind>.json.


def _read_json(path, what: str) -> Optional[Dict[str, Any]]:
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ReportError(f'{what} {path} cannot be read: {paths.describe_error(error)}') from error


def _read_metrics(metrics_path) -> List[Dict[str, Any]]:
  metrics = []
  if metrics_path.exists():
    for number, line in enumerate(metrics_path.read_text().splitlines(), 1):
      if line.strip():
        try:
          metrics.append(json.loads(line))
        except ValueError as error:
          raise ReportError(f'{metrics_path} line {number} is not JSON: {error}') from error
  return metrics


def _read_evaluations(eval_dir, suffix: str):
  """(results, perception) of one model's evaluation directory (`eval/` or `eval/seed_<s>/`)."""
  results = _read_json(eval_dir / f'results{suffix}.json', 'evaluation results')
  perception = {}
  for kind in ('pgd', 'random'):
    found = _read_json(eval_dir / f'perception_{kind}{suffix}.json', 'perception diagnostic')
    if found is not None:
      perception[kind] = found
  return results, perception


def load_directory(path: str, *, name: Optional[str] = None, ema: bool = False) -> List[Run]:
  """Reads a run directory: one Run, or for a run trained with `seeds=K` one per seed, named
  `<name>/seed_<s>`, each with its seed's config (seed s, seeds 1), metrics rows and evaluations
  (`eval/seed_<s>/`). `ema` takes the weight average's results (results_ema.json, perception_*_ema)."""
  root = paths.as_path(path)
  name = name or root.name
  if not root.is_dir():
    raise ReportError(f'{path}: no such run directory')
  try:
    config = threats.resolve(saved_config.read(root)).to_dict()
  except FileNotFoundError as error:
    raise ReportError(f'{path} has no config.json: is it a training run?') from error
  except ValueError as error:
    raise ReportError(f'{path}: {error}') from error
  metrics = _read_metrics(root / metrics_log.FILE)
  suffix = '_ema' if ema else ''
  flat = saved_config.flatten(config)
  if flat.get('seeds', 1) == 1:
    results, perception = _read_evaluations(root / 'eval', suffix)
    return [Run(path=str(path), name=name, config=flat, metrics=metrics, results=results, perception=perception)]
  runs = []
  for seed in range(flat['seed'], flat['seed'] + flat['seeds']):
    subdir = f'seed_{seed}'  # seeds.subdir's name, without building a ConfigDict per seed.
    results, perception = _read_evaluations(root / 'eval' / subdir, suffix)
    for what, found in [('results', results)] + list(perception.items()):
      if found is not None and found.get('train_seed', seed) != seed:
        raise ReportError(f"{root / 'eval' / subdir}: its {what} are of seed {found['train_seed']}, not {seed}")
    runs.append(Run(path=str(path), name=f'{name}/{subdir}', config=dict(flat, seed=seed, seeds=1),
                    metrics=[row for row in metrics if row.get('seed') == seed], results=results,
                    perception=perception))
  return runs


def load_runs(run_paths: Sequence[str], *, ema: bool = False) -> List[Run]:
  """Reads every run (a K-seed run as K runs); names are the directory names, or the paths as given where
  two names collide."""
  if not run_paths:
    raise ReportError('give at least one run directory')
  names = [paths.as_path(p).name for p in run_paths]
  runs = []
  for path, name in zip(run_paths, names):
    unique = names.count(name) == 1
    runs.extend(load_directory(path, name=name if unique else str(path).rstrip('/'), ema=ema))
  seen = set()
  for run in runs:
    if run.name in seen:
      raise ReportError(f'{run.path} is given twice')
    seen.add(run.name)
  return runs


def mean_and_nrr(clean: float, robust: float) -> Tuple[float, float]:
  """The paper's summaries of (clean, AA) accuracy: their mean and their harmonic mean (NRR)."""
  return (clean + robust) / 2, (2 * clean * robust / (clean + robust) if clean + robust > 0 else 0.0)


def fraction_of_255(value: float) -> str:
  """8/255 for 0.0313..., else the number: how budgets are written in the literature."""
  scaled = value * 255
  return f'{round(scaled)}/255' if abs(scaled - round(scaled)) < 1e-6 else f'{value:g}'


def architecture(config: Dict[str, Any]) -> str:
  """A readable model name from the config ('WideResNet-34-10', 'SmallCNN-16')."""
  name = config['model.name']
  if name == 'wide_resnet':
    return f"WideResNet-{config['model.depth']}-{config['model.widen_factor']}"
  if name == 'small_cnn':
    return f"SmallCNN-{config['model.width']}"
  return {'preact_resnet18': 'PreActResNet-18', 'preact_resnet18_benchmarks': 'PreActResNet-18 ([B], 64x64)',
          'resnet18': 'ResNet-18', 'resnet18_bottleneck': 'ResNet-18 (Bottleneck)'}.get(name, name)


def threat(config: Dict[str, Any]) -> str:
  return f"{'Linf' if config['attack.norm'] == 'linf' else 'L2'} {fraction_of_255(config['attack.eps'])}"


def _trained_epochs(run: Run) -> int:
  return max((row['epoch'] for row in run.metrics), default=0)


def describe(run: Run) -> Dict[str, Any]:
  """The run's table row: its setting, its evaluation (fractions, None where not evaluated), and notes."""
  config, results = run.config, run.results
  row = {'run': run.name, 'dataset': config['data.name'], 'model': architecture(config), 'threat': threat(config),
         'method': config['method'], 'rpat': uses_rpat(config), 'rpat_cell': _rpat_cell(config),
         'lam': config['rpat.lam'], 'rates': tuple(config['rpat.rates']), 'seed': config['seed'],
         'epochs': _trained_epochs(run), 'planned_epochs': config['epochs'], 'checkpoint': '', 'n_examples': None,
         'notes': []}
  row.update({key: None for key in METRICS})
  if results is None:
    row['notes'].append('not evaluated (python -m rpat_jax.evaluate)')
    return row
  row['checkpoint'] = f"{results['checkpoint']} (epoch {results['checkpoint_step']})"
  row['n_examples'] = results['n_examples']
  row['clean'], row['pgd20'], row['aa'] = results['clean_acc'], results['pgd20_acc'], results['aa_acc']
  row['mean'], row['nrr'] = mean_and_nrr(row['clean'], row['aa'])
  row['evaluation'] = {key: results.get(key) for key in EVALUATION_KEYS}
  if results.get('checkpoint') == 'last' and results['checkpoint_step'] < row['epochs']:
    row['notes'].append(f"stale: evaluated at epoch {results['checkpoint_step']}, trained to {row['epochs']}")
  if results.get('nan_count'):
    row['notes'].append(f"{results['nan_count']} non-finite logits in AutoAttack")
  if results.get('aa_version') != 'standard':
    row['notes'].append(f"AutoAttack version {results.get('aa_version')}")
  return row


def setting(config: Dict[str, Any], *, without: Sequence[str] = ()) -> Tuple:
  """What was trained, as a hashable value: every key but the housekeeping ones and `without`."""
  def kept(key):
    return not key.startswith(HOUSEKEEPING) and not any(key == w or key.startswith(w + '.') for w in without)
  return tuple(sorted((key, json.dumps(value)) for key, value in config.items() if kept(key)))


def uses_rpat(config: Dict[str, Any]) -> bool:
  """RPAT on a method ([B]'s regulariser), or RPAT++ (ReBAT's recipe with RPAT's term, [S])."""
  return bool(config['rpat.enabled']) or config['method'] == 'rpat_plus_plus'


def _rpat_cell(config: Dict[str, Any]) -> str:
  if config['method'] == 'rpat_plus_plus':
    return f"RPAT++ (r {config['rebat.rate']:g})"
  if config['rpat.enabled']:
    return f"on (λ {config['rpat.lam']:g}, r {', '.join(f'{r:g}' for r in config['rpat.rates'])})"
  return 'off'


def _base_setting(config: Dict[str, Any]) -> Tuple:
  """The setting without RPAT's keys: rpat.*, and RPAT++'s interpolation weight rebat.rate, whose base
  is ReBAT. Consistency-AT without its own lam weights JS with rpat.lam ([B]): there rpat.lam is part of
  the base method and must match too."""
  base = dict(config, method='rebat' if config['method'] == 'rpat_plus_plus' else config['method'])
  key = setting(base, without=['rpat', 'rebat.rate'])
  if config['method'] == 'consistency' and config.get('consistency.lam') is None:
    key += (('consistency.weight', json.dumps(config['rpat.lam'])),)
  return key


def pair_bases(runs: Sequence[Run], rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
  """For each RPAT run, its base run (the same setting with RPAT off, seed included) and the change in
  percentage points; a note instead where there is none, two candidates, or they were evaluated apart."""
  by_name = {row['run']: row for row in rows}
  keys = {run.name: _base_setting(run.config) for run in runs}
  pairs = {}
  for run in runs:
    if not uses_rpat(run.config):
      continue
    bases = [other.name for other in runs if not uses_rpat(other.config) and keys[other.name] == keys[run.name]]
    pair = {'base': None, 'delta': None, 'note': ''}
    pairs[run.name] = pair
    if not bases:
      pair['note'] = 'no base run given (the same setting and seed with RPAT off)'
      continue
    if len(bases) > 1:
      pair['note'] = f"two or more base runs: {', '.join(bases)}"
      continue
    pair['base'] = bases[0]
    mine, base = by_name[run.name], by_name[bases[0]]
    if mine['clean'] is None or base['clean'] is None:
      pair['note'] = 'not both evaluated'
      continue
    differ = [key for key in EVALUATION_KEYS if mine['evaluation'][key] != base['evaluation'][key]]
    if differ:
      pair['note'] = 'evaluated differently: ' + ', '.join(
          f"{key} {mine['evaluation'][key]} vs {base['evaluation'][key]}" for key in differ)
      continue
    pair['delta'] = {key: mine[key] - base[key] for key in METRICS}
  return pairs


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
  """The `probability` quantile of Student's t distribution (scipy, which jax depends on)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel  # Slow to import; only the report needs it.
  return float(stats.t.ppf(probability, degrees_of_freedom))


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float, float]:
  """(mean, sample standard deviation, low, high) of paired differences (at least two): the confidence
  interval of their mean, mean ± t(1 - (1 - confidence)/2, n - 1) · sd / √n."""
  n = len(differences)
  mean, deviation = statistics.mean(differences), statistics.stdev(differences)
  half = t_quantile(1 - (1 - confidence) / 2, n - 1) * deviation / math.sqrt(n)
  return mean, deviation, mean - half, mean + half


def seed_groups(runs: Sequence[Run], rows: Sequence[Dict[str, Any]],
                pairs: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Runs that differ only in their seed, evaluated alike: mean and sample standard deviation per metric,
  and for RPAT groups the per-seed changes over the base (the seeds with a base evaluated alike, at least
  two): their mean, deviation and 95% confidence interval (`paired_interval`)."""
  by_name = {row['run']: row for row in rows}
  groups: Dict[Tuple, List[str]] = {}
  for run in runs:
    row = by_name[run.name]
    if row['clean'] is None:
      continue
    key = setting(run.config, without=['seed']) + tuple(sorted(
        (k, json.dumps(v)) for k, v in row['evaluation'].items() if k != 'seed'))
    groups.setdefault(key, []).append(run.name)
  summaries = []
  for names in groups.values():
    if len(names) < 2:
      continue
    first = by_name[names[0]]
    summary = {key: first[key] for key in ('dataset', 'model', 'threat', 'method', 'rpat', 'rpat_cell', 'lam',
                                           'rates', 'epochs', 'n_examples')}
    summary.update(runs=names, seeds=[by_name[n]['seed'] for n in names])
    for key in METRICS:
      values = [by_name[n][key] for n in names]
      summary[key] = (statistics.mean(values), statistics.stdev(values))
    paired = [n for n in names if n in pairs and pairs[n]['delta'] is not None]
    summary.update(delta=None, delta_interval=None, delta_seeds=[by_name[n]['seed'] for n in paired])
    if len(paired) >= 2:
      intervals = {key: paired_interval([pairs[n]['delta'][key] for n in paired]) for key in METRICS}
      summary['delta'] = {key: interval[:2] for key, interval in intervals.items()}
      summary['delta_interval'] = {key: interval[2:] for key, interval in intervals.items()}
    summaries.append(summary)
  return summaries


def perception_rows(runs: Sequence[Run]) -> List[Dict[str, Any]]:
  """Each run's diagnostics, with what does not add up in them (`checks`: 'ok' or the problems)."""
  rows = []
  for run in runs:
    for _, result in sorted(run.perception.items()):
      problems = perception.inconsistencies(result)
      if result.get('checkpoint') == 'last' and (result.get('checkpoint_step') or 0) < _trained_epochs(run):
        problems.append(f"stale: epoch {result['checkpoint_step']}, trained to {_trained_epochs(run)}")
      rows.append(dict(result, run=run.name, checks='; '.join(problems) or 'ok',
                       run_method=run.config['method'] + (' + RPAT' if run.config['rpat.enabled'] else '')))
  return rows
