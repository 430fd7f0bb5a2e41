"""The rows of `python -m rpat_jax.aot` as a markdown table and a one-line summary per program."""

from typing import Dict

METHODS = {'pgd_at': 'PGD-AT', 'trades': 'TRADES', 'mart': 'MART', 'rebat': 'ReBAT', 'rpat_plus_plus': 'RPAT++'}


def _gib(value) -> str:
  return '-' if value is None else f'{value / 2**30:.2f}'


def collectives_text(found: Dict[str, Dict[str, int]]) -> str:
  """'53 all-reduce (45.1 MB), 2 reduce-scatter (0.4 MB)': count and bytes of each collective."""
  if not found:
    return 'none'
  return ', '.join(f'{entry["count"]} {op} ({entry["bytes"] / 1e6:.1f} MB)' for op, entry in sorted(found.items()))


def _estimate(row) -> tuple:
  estimate = row.get('estimate')
  if not estimate:
    return '-', '-', '-'
  per_chip = estimate['images_per_second_per_chip']
  fraction = estimate.get('fraction_of_peak')
  return (f'{estimate["step_seconds"] * 1e3:.3g}', f'{per_chip:,.0f}',
          f'{fraction:.0%} ({estimate["bound"]})' if fraction is not None else 'lower bound')


def _largest(row: Dict) -> str:
  """The searched batch (compiled and fitting), else '~N' estimated from one compile."""
  if 'largest_batch' in row:
    return str(row['largest_batch']['batch'])
  return f'~{row["largest_batch_estimate"]}' if row.get('largest_batch_estimate') else '-'


def summary(row: Dict) -> str:
  if 'error' in row:
    return f'did not compile: {row["error"]}'
  step_ms, per_chip, _ = _estimate(row)
  largest = _largest(row)
  flops = row.get('flops_per_image')
  return (f'{_gib(row["bytes_per_device"])} GiB of {_gib(row["device_bytes"])} per device '
          f'({"fits" if row["fits"] else "does NOT fit"}), largest batch/device {largest}, '
          f'{flops / 1e9 if flops else 0:.2f} GFLOP/img, est. {step_ms} ms, {per_chip} img/s/chip, '
          f'{collectives_text(row["collectives"])}; compiled in {row["compile_seconds"]} s')


def _dtypes(row: Dict) -> str:
  return ', '.join(f'{n} {d}' for d, n in sorted(row['matrix_dtypes'].items())) or '-'


def _duration(seconds) -> str:
  if not seconds:
    return '-'
  return f'{seconds:.1f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


def markdown(report: Dict) -> str:
  """One command's report: what it compiled, then its rows."""
  return (f'# `python -m rpat_jax.aot` {report["config"]} (batch {report["batch_size"]}, jax {report["jax"]}); every '
          'time and rate is the compiler\'s estimate, not a measurement\n\n' + reference_rows([report]))


def reference_rows(reports) -> str:
  """One row per (config, target, program) of several `--out` JSON files: the table of docs/benchmarks.md."""
  lines = ['| model | method | dtype | target | program | images/device | GiB/device (of) | largest batch/device | '
           'GFLOP/image | est. images/s/chip | est. images/s, slice | est. epoch | est. % of peak (bound) | '
           'matrix ops by dtype | collectives per call | compile s |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for report in reports:
    method = f'{METHODS.get(report["method"], report["method"])}{" + RPAT" if report["rpat"] else ""}'
    for result in report['targets']:
      for name, row in result['programs'].items():
        head = f'| {report["model"]} | {method} | {report["dtype"]} | {result["target"]} | {name} |'
        if 'error' in row:
          lines.append(f'{head} did not compile: {row["error"]} |' + ' |' * 10)
          continue
        estimate = row.get('estimate') or {}
        flops = row.get('flops_per_image')
        per_chip = estimate.get('images_per_second_per_chip')
        there = row.get('largest_batch', {}).get('estimate')
        if there:  # The searched batch's rate too: what a run at that batch would see.
          per_chip_text = (f'{per_chip:,.0f}; {there["images_per_second_per_chip"]:,.0f} at '
                           f'{row["largest_batch"]["batch"]}')
        else:
          per_chip_text = f'{per_chip:,.0f}' if per_chip else '-'
        slice_rate = per_chip * result['chips'] if per_chip else None
        epoch = estimate.get('epoch_seconds')
        bound = (f'{estimate["fraction_of_peak"]:.0%} ({estimate["bound"]})' if 'fraction_of_peak' in estimate
                 else ('lower bound' if estimate else '-'))
        fits = '' if row['fits'] else ' **does not fit**'
        lines.append(
            f'{head} {row["images_per_device"]:g} | {_gib(row["bytes_per_device"])} ({_gib(row["device_bytes"])})'
            f'{fits} | {_largest(row)} | {f"{flops / 1e9:.1f}" if flops else "-"} | '
            f'{per_chip_text} | {f"{slice_rate:,.0f}" if slice_rate else "-"} | '
            f'{_duration(epoch)} | {bound} | {_dtypes(row)} | {collectives_text(row["collectives"])} | '
            f'{row["compile_seconds"]} |')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  import json  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  print(reference_rows([json.load(open(path)) for path in sys.argv[1:]]), end='')
