"""The report's tables: results.md, results.csv and results.tex from the rows, pairs and seed groups of
`rpat_jax.report`, and a run's entry in RobustBench's model-info shape. Percentages have two decimals;
changes are signed percentage points."""

import csv
import io
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rpat_jax.report import METRICS, METRIC_NAMES, fraction_of_255


def _percent(value: Optional[float]) -> str:
  return '' if value is None else f'{100 * value:.2f}'


def _signed(value: Optional[float]) -> str:
  return '' if value is None else f'{100 * value:+.2f}'


def _mean_std(pair, signed=False) -> str:
  mean, std = pair
  return f"{100 * mean:{'+' if signed else ''}.2f} ± {100 * std:.2f}"


def _paired_change(group, key) -> str:
  """'+0.85 ± 0.21 [+0.33, +1.37] *': the mean change ± its deviation, its interval, * if it excludes 0."""
  if not group['delta']:
    return ''
  low, high = group['delta_interval'][key]
  return (f"{_mean_std(group['delta'][key], signed=True)} [{_signed(low)}, {_signed(high)}]"
          + (' *' if low > 0 or high < 0 else ''))


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> List[str]:
  out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return out + ['| ' + ' | '.join(str(cell) for cell in line) + ' |' for line in lines]


RUN_HEADER = ('run', 'dataset', 'model', 'threat', 'method', 'RPAT', 'seed', 'epochs', 'checkpoint', 'points')


def _setting_cells(row):
  points = '' if row['n_examples'] is None else str(row['n_examples'])
  return [row['run'], row['dataset'], row['model'], row['threat'], row['method'], row['rpat_cell'], row['seed'],
          row['epochs'], row['checkpoint'], points]


def markdown(rows, pairs, groups, perception_rows=()) -> str:
  """results.md: the runs, RPAT over its base, means over seeds, and the perception diagnostic."""
  lines = ['# Results', '', 'Accuracies in percent on the first `points` test images; Mean = (Clean + AA)/2,'
           ' NRR = 2·Clean·AA/(Clean + AA). Changes are in percentage points.', '', '## Runs', '']
  lines += _md_table(RUN_HEADER + tuple(METRIC_NAMES.values()) + ('notes',),
                     [_setting_cells(r) + [_percent(r[k]) for k in METRICS] + ['; '.join(r['notes'])] for r in rows])
  if pairs:
    lines += ['', '## + RPAT over its base run (same setting and seed, RPAT off)', '']
    lines += _md_table(('run', 'base') + tuple(f'Δ {n}' for n in METRIC_NAMES.values()) + ('note',),
                       [[name, pair['base'] or ''] + [_signed(pair['delta'] and pair['delta'][k]) for k in METRICS]
                        + [pair['note']] for name, pair in pairs.items()])
  if groups:
    lines += ['', '## Over seeds (mean ± sample standard deviation)', '',
              'Δ over base: the per-seed change over the base run, over the seeds with one (`paired seeds`, at '
              'least two): mean ± standard deviation [95% confidence interval of the mean change, Student t '
              'with n − 1 degrees of freedom]; * marks an interval that excludes 0.', '']
    lines += _md_table(('dataset', 'model', 'threat', 'method', 'RPAT', 'seeds', 'runs')
                       + tuple(METRIC_NAMES.values()) + tuple(f'Δ {n} over base' for n in ('Clean', 'AA', 'NRR'))
                       + ('paired seeds',),
                       [[g['dataset'], g['model'], g['threat'], g['method'], g['rpat_cell'],
                         ', '.join(map(str, g['seeds'])), ', '.join(g['runs'])]
                        + [_mean_std(g[k]) for k in METRICS]
                        + [_paired_change(g, k) for k in ('clean', 'aa', 'nrr')]
                        + [', '.join(map(str, g['delta_seeds'])) if g['delta'] else '']
                        for g in groups])
  if perception_rows:
    lines += ['', '## Perception diagnostic (mean squared logit change between x and its perturbation)', '',
              'd = mean over points and classes of (z(x) − z(x′))²; success = still correct on x′. '
              'first/second = d(x, midpoint) / d(midpoint, x′) (1 for a linear response). Linearity error: how far '
              'the normalised profile ‖z(x + αΔ) − z(x)‖ departs from the diagonal (0 = linear). checks: the '
              'group counts add up, `all` is the count-weighted mean of the groups, the profile is 0 at α = 0.', '']
    lines += _md_table(('run', 'method', 'perturbation', 'checkpoint', 'points', 'clean', 'perturbed',
                        'success / failure', 'd all', 'd success', 'd failure', 'first/second all',
                        'linearity error all', 'success', 'failure', 'checks'),
                       [_perception_cells(p) for p in perception_rows])
  return '\n'.join(lines) + '\n'


def _number(value: Optional[float], digits: int = 4) -> str:
  return '' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.{digits}g}'


def _perception_cells(p: Dict[str, Any]) -> List[str]:
  groups = p['groups']
  return [p['run'], p['run_method'], p['perturbation'], f"{p['checkpoint']} (epoch {p['checkpoint_step']})",
          p['n_examples'], _percent(p['clean_acc']), _percent(p['perturbed_acc']),
          f"{groups['success']['count']} / {groups['failure']['count']}"] + [
              _number(groups[g]['d_full']) for g in ('all', 'success', 'failure')] + [
              _number(groups['all']['first_over_second'], 3)] + [
              _number(groups[g]['linearity_error'], 3) for g in ('all', 'success', 'failure')] + [p['checks']]


CSV_FIELDS = ('run', 'dataset', 'model', 'threat', 'method', 'rpat', 'lam', 'rates', 'seed', 'epochs', 'checkpoint',
              'n_examples') + METRICS + ('base_run',) + tuple(f'delta_{k}' for k in METRICS) + ('notes',)


def csv_text(rows, pairs) -> str:
  """results.csv: one line per run, percentages with two decimals, the change over the base beside it."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, CSV_FIELDS, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    pair = pairs.get(row['run'], {})
    delta = pair.get('delta') or {}
    line = {key: row[key] for key in CSV_FIELDS if key in row}
    line.update(rpat=str(row['rpat']).lower(), rates=' '.join(f'{r:g}' for r in row['rates']),
                n_examples='' if row['n_examples'] is None else row['n_examples'], base_run=pair.get('base') or '',
                notes='; '.join(row['notes'] + ([pair['note']] if pair.get('note') else [])))
    line.update({key: _percent(row[key]) for key in METRICS})
    line.update({f'delta_{key}': _signed(delta.get(key)) for key in METRICS})
    writer.writerow(line)
  return buffer.getvalue()


def _tex_escape(text: str) -> str:
  for old, new in (('\\', r'\textbackslash{}'), ('&', r'\&'), ('%', r'\%'), ('_', r'\_'), ('#', r'\#'),
                   ('λ', r'$\lambda$'), ('±', r'$\pm$'), ('Δ', r'$\Delta$')):
    text = text.replace(old, new)
  return text


def latex(rows, pairs) -> str:
  """results.tex: a booktabs table in the paper's layout, each RPAT run followed by its change over the base."""
  header = ('Run', 'Dataset', 'Model', 'Threat', 'Method', 'Seed') + tuple(METRIC_NAMES.values())
  lines = [r'% Written by python -m rpat_jax.report; needs \usepackage{booktabs}.',
           r'\begin{tabular}{' + 'l' * 6 + 'r' * len(METRICS) + '}', r'\toprule',
           ' & '.join(header) + r' \\', r'\midrule']
  for row in rows:
    method = row['method'].replace('_', '-') + (' + RPAT' if row['rpat_cell'].startswith('on') else '')
    cells = [row['run'], row['dataset'], row['model'], row['threat'], method, str(row['seed'])]
    lines.append(' & '.join(_tex_escape(c) for c in cells) + ' & '
                 + ' & '.join(_percent(row[k]) or '--' for k in METRICS) + r' \\')
    delta = pairs.get(row['run'], {}).get('delta')
    if delta:
      lines.append(' & ' * 5 + _tex_escape(f"Δ over {pairs[row['run']]['base']}") + ' & '
                   + ' & '.join(f'({_signed(delta[k])})' for k in METRICS) + r' \\')
  lines += [r'\bottomrule', r'\end{tabular}']
  return '\n'.join(lines) + '\n'


def robustbench_entry(row: Dict[str, Any], config: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
  """The run in RobustBench's model-info JSON shape, and its place (`<dataset>/<Linf|L2>/<run>.json`).
  link, name, authors, venue and reported are the submitter's to fill, as RobustBench's own `to_disk`
  leaves them; a footnote says where this evaluation differs from the leaderboard's protocol."""
  threat_dir = 'Linf' if config['attack.norm'] == 'linf' else 'L2'
  footnotes = []
  if row['n_examples'] is not None and row['n_examples'] < 10000:
    footnotes.append(f"AutoAttack on the first {row['n_examples']} test points, not the full test set")
  if row['dataset'] not in ('cifar10', 'cifar100', 'imagenet'):
    footnotes.append(f"dataset {row['dataset']} is not a RobustBench dataset")
  if threat_dir == 'L2' and abs(config['attack.eps'] - 0.5) > 1e-9:
    footnotes.append(f"L2 eps {config['attack.eps']:.4g}; the L2 leaderboards use 0.5")
  entry = {'link': '', 'name': '', 'authors': '', 'additional_data': False, 'number_forward_passes': 1,
           'dataset': row['dataset'], 'venue': '', 'architecture': row['model'],
           'eps': fraction_of_255(config['attack.eps']), 'clean_acc': _percent(row['clean']), 'reported': '',
           'autoattack_acc': _percent(row['aa']), 'footnote': '; '.join(footnotes) or None, 'unreliable': False}
  return f"{row['dataset']}/{threat_dir}/{row['run']}.json", entry
