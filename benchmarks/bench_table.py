"""Markdown table rows from `python -m rpat_jax.bench --out=F` files, for docs/benchmarks.md.

  python benchmarks/bench_table.py A.json B.json ...    # one row per train-step JSON, PyTorch columns included
"""
import json
import sys


def _number(value, digits=1):
  return '-' if value is None else f'{value:,.{digits}f}'


def _torch_columns(mode):
  if not mode:
    return ['-', '-']
  return [f"{_number(mode['images_per_second'], 2)} (batch {mode['batch_size']})", f"{mode['jax_speedup']:.2f}x"]


def row_cells(row):
  torch = row.get('torch') or {}
  switches = [part[len('--config.'):] for part in row['command'].split() if part.startswith('--config.')]
  step = row['step_ms']
  flops = row['flops_per_image']
  return [row['model'], row['dtype'], str(row['batch_size']), ', '.join(switches) or '-',
          _number(row['compile_seconds']),
          f"{_number(step['median'])} ({_number(step['p10'])}-{_number(step['p90'])})",
          _number(row['images_per_second'], 2), _number(flops and flops / 1e9, 2),
          '-' if row['mfu'] is None else f"{100 * row['mfu']:.1f}%",
          *_torch_columns(torch.get('reference')), *_torch_columns(torch.get('tuned'))]


HEADER = ['model', 'dtype', 'batch', 'config overrides', 'compile s', 'ms / step (p10-p90)', 'img/s', 'GFLOP / img',
          'MFU', 'PyTorch reference img/s', 'ours / reference', 'PyTorch tuned img/s', 'ours / tuned']

if __name__ == '__main__':
  print('| ' + ' | '.join(HEADER) + ' |')
  print('|' + '---|' * len(HEADER))
  for name in sys.argv[1:]:
    with open(name) as f:
      print('| ' + ' | '.join(row_cells(json.load(f))) + ' |')
