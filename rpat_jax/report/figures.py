"""The report's pictures, as PNG bytes (matplotlib without a display): training curves per epoch, the
clean-vs-AutoAttack plane with iso-NRR curves and the paper's published points, and the perception
diagnostic across runs."""

import importlib.resources
import io
import json
from typing import Any, Dict, List, Sequence, Tuple

CURVES = (('train_loss', 'training loss'), ('train_acc', 'training accuracy (on the inputs trained on)'),
          ('test_clean_acc', 'test clean accuracy'), ('test_pgd_acc', 'test PGD accuracy (training-time eval)'),
          ('lr', 'learning rate'))
ISO_NRR = tuple(n / 100 for n in range(10, 100, 5))


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  return pyplot


def _png(figure) -> bytes:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  _pyplot().close(figure)
  return buffer.getvalue()


def paper_points() -> Dict[str, Any]:
  """The package's data file of published (clean, AA) points, with its `source`."""
  text = importlib.resources.files('rpat_jax.report').joinpath('paper_points.json').read_text()
  return json.loads(text)


def _colours_and_labels(names: Sequence[str]) -> Tuple[List[str], List[str]]:
  """A colour and a legend label per run name: the seeds of a K-seed run (`<run>/seed_<s>`) share their
  run's colour and one legend entry, so a figure of several K-seed runs stays readable."""
  cycle = _pyplot().rcParams['axes.prop_cycle'].by_key()['color']
  arms = [name.split('/seed_')[0] for name in names]
  order = list(dict.fromkeys(arms))
  colours = [cycle[order.index(arm) % len(cycle)] for arm in arms]
  labels = []
  for position, (name, arm) in enumerate(zip(names, arms)):
    seeds = arms.count(arm)
    if arm == name or seeds == 1:
      labels.append(name)
    else:
      labels.append(f'{arm} ({seeds} seeds)' if arms.index(arm) == position else '_nolegend_')
  return colours, labels


def training_curves(runs: Sequence) -> bytes:
  """One panel per logged quantity, one line per run (a K-seed run's seeds in one colour), against the
  epoch."""
  pyplot = _pyplot()
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  figure, axes = pyplot.subplots(2, 3, figsize=(15, 8))
  axes = axes.ravel()
  colours, labels = _colours_and_labels([run.name for run in runs])
  for axis, (key, title) in zip(axes, CURVES):
    for run, colour, label in zip(runs, colours, labels):
      points = [(row['epoch'], row[key]) for row in run.metrics if row.get(key) is not None]
      if points:
        scale = 1 if key in ('train_loss', 'lr') else 100
        axis.plot([e for e, _ in points], [scale * v for _, v in points], marker='o', markersize=3, label=label,
                  color=colour)
    axis.set_title(title)
    axis.set_xlabel('epoch')
    axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if key == 'lr' and axis.lines:
      axis.set_yscale('log')
    if key not in ('train_loss', 'lr'):
      axis.set_ylabel('%')
  axes[0].legend(fontsize='small')
  axes[-1].axis('off')
  axes[-1].text(0, 0.5, 'Test accuracies here are the training run\'s own\nper-epoch evaluation (eval.num_examples '
                'points,\nPGD eval.pgd_steps), not the final evaluation.', fontsize=10, va='center')
  figure.tight_layout()
  return _png(figure)


def iso_nrr_curve(nrr: float, steps: int = 200) -> List:
  """Points (clean, AA) in percent with 2CA/(C + A) = nrr: A = nrr C / (2C - nrr), for C in (nrr/2, 100]."""
  points = []
  for i in range(steps + 1):
    clean = nrr / 2 + (100 - nrr / 2) * (i + 1) / (steps + 1)
    robust = nrr * clean / (2 * clean - nrr)
    if robust <= 100:
      points.append((clean, robust))
  return points


def tradeoff(rows: Sequence[Dict[str, Any]], references: Sequence[Dict[str, Any]], title: str) -> bytes:
  """Clean vs AA accuracy of the evaluated runs (a colour per method and RPAT on/off, circles with RPAT),
  iso-NRR curves, and the paper's points for the same dataset, model and threat as grey squares."""
  pyplot = _pyplot()
  figure, axis = pyplot.subplots(figsize=(7, 6))
  evaluated = [row for row in rows if row['aa'] is not None]
  values = [(100 * r['clean'], 100 * r['aa']) for r in evaluated] + [(p['clean'], p['aa']) for p in references]
  low_c = max(0.0, min(c for c, _ in values) - 5)
  high_c = min(100.0, max(c for c, _ in values) + 5)
  low_a = max(0.0, min(a for _, a in values) - 5)
  high_a = min(100.0, max(a for _, a in values) + 5)
  for nrr in [n * 100 for n in ISO_NRR]:
    curve = iso_nrr_curve(nrr)
    axis.plot([c for c, _ in curve], [a for _, a in curve], color='#bbbbbb', linewidth=0.8, zorder=0)
    inside = [(c, a) for c, a in curve if low_c <= c <= high_c and low_a <= a <= high_a]
    if inside:
      axis.annotate(f'NRR {nrr:.0f}', inside[len(inside) // 2], color='#888888', fontsize=8)
  for point in references:
    axis.scatter(point['clean'], point['aa'], marker='s', color='#999999', s=25, zorder=1)
    axis.annotate(point['method'], (point['clean'], point['aa']), fontsize=7, color='#666666',
                  xytext=(3, 3), textcoords='offset points')
  colours = {}
  for row in evaluated:
    key = (row['method'], row['rpat'])
    colour = colours.setdefault(key, f'C{len(colours)}')
    label = row['method'] + (' + RPAT' if row['rpat_cell'].startswith('on') else '')
    axis.scatter(100 * row['clean'], 100 * row['aa'], color=colour, s=60, zorder=2, edgecolors='black',
                 marker='o' if row['rpat'] else 'D', label=label if label not in axis.get_legend_handles_labels()[1]
                 else None)
    axis.annotate(row['run'], (100 * row['clean'], 100 * row['aa']), fontsize=8, xytext=(4, -10),
                  textcoords='offset points')
  axis.set_xlim(low_c, high_c)
  axis.set_ylim(low_a, high_a)
  axis.set_xlabel('clean accuracy (%)')
  axis.set_ylabel('AutoAttack accuracy (%)')
  axis.set_title(title + ('\ngrey squares: the paper\'s published points' if references else ''), fontsize=10)
  if evaluated:
    axis.legend(fontsize='small', loc='lower left')
  figure.tight_layout()
  return _png(figure)


def perception(results: Sequence[Dict[str, Any]], kind: str) -> bytes:
  """The diagnostic across runs: mean squared logit change per group (bars) and the normalised linearity
  profile of all points, one line per run."""
  pyplot = _pyplot()
  figure, (bars, profile) = pyplot.subplots(1, 2, figsize=(max(13, 4 + 2.2 * len(results)), 5.5),
                                            gridspec_kw={'width_ratios': [max(1, len(results) / 3), 1]})
  width = 0.8 / 3
  for g, (group, colour) in enumerate(zip(('all', 'success', 'failure'), ('#777777', '#2a7ab9', '#d1495b'))):
    xs = [i + (g - 1) * width for i in range(len(results))]
    values = [r['groups'][group]['d_full'] if r['groups'][group]['count'] else 0.0 for r in results]
    bars.bar(xs, values, width, color=colour, label=group)
  bars.set_xticks(range(len(results)))
  bars.set_xticklabels([f"{r['run']}\n{r['run_method']}\nclean {r['clean_acc']:.0%}\nperturbed {r['perturbed_acc']:.0%}"
                        for r in results], fontsize=8)
  drawn = [r['groups'][g]['d_full'] for r in results for g in ('all', 'success', 'failure') if r['groups'][g]['count']]
  if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > 20:  # Clean and adversarial training side by side.
    bars.set_yscale('log')
  bars.set_ylabel("mean squared logit change (z(x) - z(x'))^2")
  bars.set_title(f'{kind} perturbation')
  bars.legend()
  colours, _ = _colours_and_labels([result['run'] for result in results])
  for result, colour in zip(results, colours):
    curve = result['groups']['all']['profile']
    end = curve['distance'][-1] or 1.0
    profile.plot(curve['alphas'], [d / end for d in curve['distance']], marker='o', markersize=3, color=colour,
                 label=f"{result['run']} (error {result['groups']['all']['linearity_error']:.3f})")
  profile.plot([0, 1], [0, 1], color='black', linewidth=0.8, linestyle='--', label='linear')
  profile.set_xlabel("alpha along x + alpha (x' - x)")
  profile.set_ylabel('||z(x + alpha d) - z(x)|| / its value at 1 (all points)')
  profile.set_title('linearity profile')
  profile.legend(fontsize='small')
  figure.tight_layout()
  return _png(figure)
