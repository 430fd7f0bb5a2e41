"""The diagnostic's picture: the paper's bars (mean squared logit change per group, accuracies marked)
beside the linearity profile per group (the diagonal is a linear response)."""

from typing import Dict


def draw(result: Dict, title: str) -> bytes:
  """PNG bytes of the figure for one `perception.diagnose` result (matplotlib without a display)."""
  import io  # pylint: disable=import-outside-toplevel
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

  groups = result['groups']
  names = [name for name in ('all', 'success', 'failure') if groups[name]['count']]
  figure, (bars, profile) = pyplot.subplots(1, 2, figsize=(10, 4))
  values = [groups[name]['d_full'] for name in names]
  bars.bar(names, values, color=['#777777', '#2a7ab9', '#d1495b'][:len(names)])
  for index, value in enumerate(values):
    bars.annotate(f'{value:.3g}', (index, value), ha='center', va='bottom')
  bars.set_ylabel('mean squared logit change (z(x) - z(x\'))^2')
  accuracy = bars.twinx()
  accuracy.axhline(100 * result['clean_acc'], color='black', linestyle='--', label=f"clean {result['clean_acc']:.1%}")
  accuracy.axhline(100 * result['perturbed_acc'], color='black', linestyle=':',
                   label=f"perturbed {result['perturbed_acc']:.1%}")
  accuracy.set_ylim(0, 100)
  accuracy.set_ylabel('accuracy (%)')
  accuracy.legend(loc='lower right', framealpha=0.9)
  bars.set_title(f"{result['perturbation']} perturbation, {result['n_examples']} points")
  for name, color in zip(names, ['#777777', '#2a7ab9', '#d1495b']):
    curve = groups[name]['profile']
    end = curve['distance'][-1] or 1.0
    profile.plot(curve['alphas'], [d / end for d in curve['distance']], marker='o', color=color,
                 label=f"{name} (error {groups[name]['linearity_error']:.3f})")
  profile.plot([0, 1], [0, 1], color='black', linewidth=0.8, linestyle='--', label='linear')
  profile.set_xlabel('alpha along x + alpha (x\' - x)')
  profile.set_ylabel('||z(x + alpha d) - z(x)|| / its value at 1')
  profile.set_title('linearity profile')
  profile.legend()
  figure.suptitle(title)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  pyplot.close(figure)
  return buffer.getvalue()
