"""Many runs into one table and pictures, as the paper reports them.

  python -m rpat_jax.report runs/pgdat_s0 runs/rpat_s0 runs/pgdat_s1 runs/rpat_s1 --out=report
  python -m rpat_jax.report runs/* --out=report --robustbench=report/robustbench

Reads each run's `config.json`, `metrics.jsonl`, `eval/results.json` (`--ema`: `results_ema.json`) and
`eval/perception_*.json` (a run trained with `--config.seeds=K`: K runs `<run>/seed_<s>`, each with its
metrics rows and `eval/seed_<s>/`), and writes to `--out`: `results.md`, `results.csv`, `results.tex` (one
row per run, each RPAT run's change over its base run, means over seeds with a 95% interval of the paired
change), `training_curves.png`, `tradeoff_<dataset>_<model>_<threat>.png` per setting evaluated with
AutoAttack (the paper's published points of that setting as references), and `perception_<kind>.png` where
runs have the diagnostic. `--robustbench=DIR` also writes `DIR/<dataset>/<Linf|L2>/<run>.json` in
RobustBench's model-info shape (`<run>/seed_<s>.json` for a seed of a K-seed run).
Bad input gives one line, `rpat_jax.report: error: ...`, and exit status 2.
"""

import re
import types

from absl import flags

from rpat_jax.run import cli as cli_lib
from rpat_jax.run import paths
from rpat_jax import report
from rpat_jax.report import figures
from rpat_jax.report import tables

PROG = 'rpat_jax.report'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  values = dict(flag_values=flag_values)
  cli = types.SimpleNamespace(
      out=flags.DEFINE_string('out', None, 'Directory for the tables and figures.', **values),
      robustbench=flags.DEFINE_string('robustbench', None, "Also write each evaluated run's RobustBench model-info "
                                      'JSON under this directory.', **values),
      ema=flags.DEFINE_bool('ema', False, "The weight averages' evaluations (results_ema.json).", **values))
  flags.mark_flags_as_required(['out'], flag_values=flag_values)
  return cli


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')


def write_report(run_paths, out: str, *, robustbench: str = None, ema: bool = False):
  """Writes the report of these runs to `out`; returns the paths written."""
  runs = report.load_runs(run_paths, ema=ema)
  rows = [report.describe(run) for run in runs]
  pairs = report.pair_bases(runs, rows)
  groups = report.seed_groups(runs, rows, pairs)
  perception_rows = report.perception_rows(runs)
  out_dir = paths.make_dir(out, what='--out directory')
  written = []

  def write(path, data):
    paths.write_atomic(path, data)
    written.append(str(path))

  write(out_dir / 'results.md', tables.markdown(rows, pairs, groups, perception_rows))
  write(out_dir / 'results.csv', tables.csv_text(rows, pairs))
  write(out_dir / 'results.tex', tables.latex(rows, pairs))
  write(out_dir / 'training_curves.png', figures.training_curves(runs))
  published = figures.paper_points()['points']
  settings = {}
  for row in rows:
    if row['aa'] is not None:
      settings.setdefault((row['dataset'], row['model'], row['threat']), []).append(row)
  for (dataset, model, threat), members in settings.items():
    references = [p for p in published if (p['dataset'], p['architecture'], p['threat']) == (dataset, model, threat)]
    write(out_dir / f'tradeoff_{_slug(dataset)}_{_slug(model)}_{_slug(threat)}.png',
          figures.tradeoff(members, references, f'{dataset}, {model}, {threat}'))
  for kind in ('pgd', 'random'):
    chosen = [p for p in perception_rows if p['perturbation'] == kind]
    if chosen:
      write(out_dir / f'perception_{kind}.png', figures.perception(chosen, kind))
  if robustbench:
    import json  # pylint: disable=import-outside-toplevel
    root = paths.as_path(robustbench)
    for run, row in zip(runs, rows):
      if row['aa'] is not None:
        where, entry = tables.robustbench_entry(row, run.config)
        paths.make_dir((root / where).parent, what='--robustbench directory')
        write(root / where, json.dumps(entry, indent=2) + '\n')
  return written


def main(argv, cli) -> None:
  if len(argv) < 2:
    cli_lib.fail(PROG, ValueError('give the run directories to report, e.g. runs/pgdat_s0 runs/rpat_s0'))
  try:
    written = write_report(argv[1:], cli.out.value, robustbench=cli.robustbench.value, ema=cli.ema.value)
  except (report.ReportError, paths.PathError) as error:
    cli_lib.fail(PROG, error)
  print('\n'.join(['Wrote:'] + written))


if __name__ == '__main__':
  cli_lib.run_app(PROG, main, define_flags())
