"""The package's layout: the science at the top level, no import cycle, and every CPU-only path behind the
one gate (`rpat_jax.cpu.enabled`)."""

import ast
import pathlib
import re
import sys

from helpers import ROOT

PACKAGE = pathlib.Path(ROOT) / 'rpat_jax'
SCIENCE = {'main', 'train', 'experiment', 'methods', 'steps', 'forward', 'objectives', 'attacks', 'optim', 'seeds'}
# What code outside rpat_jax/cpu may call there: the entry points that ask the gate themselves.
GATED_ENTRY_POINTS = {'convs.for_attacks', 'chunks.for_gradients', 'chunks.points_per_call', 'hoisted_jit.jit',
                      'hoisted_jit.run_once_options', 'xla_flags.prefer_eigen_convolutions'}


def _modules():
  """{dotted module name: path} of every module of the package (a package is its __init__)."""
  found = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return found


def _imports(path, modules):
  """The package's modules that `path` imports, at any depth of the file (function-level imports too). A
  name imported from a package is that package's submodule where there is one, else the package itself;
  the parent packages Python runs on the way are not counted (they are not what the module asks for)."""
  this = next(name for name, p in modules.items() if p == path)
  package = this if path.name == '__init__.py' else this.rpartition('.')[0]
  targets = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets.update(alias.name for alias in node.names if alias.name in modules)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
      if not base.startswith('rpat_jax'):
        continue
      for alias in node.names:
        targets.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base)
  return targets - {this}


def test_the_top_level_holds_the_science_and_the_rest_is_in_subpackages():
  top = {path.stem for path in PACKAGE.glob('*.py')} - {'__init__'}
  assert top == SCIENCE and len(top) <= 12, sorted(top)
  for package in ('config', 'run', 'sharding', 'cpu'):
    docstring = ast.get_docstring(ast.parse((PACKAGE / package / '__init__.py').read_text()))
    assert docstring, f'{package}/__init__.py says what the subpackage holds'


def test_no_module_imports_one_that_imports_it_back():
  modules = _modules()
  graph = {name: _imports(path, modules) for name, path in modules.items()}
  assert graph['rpat_jax.methods'] and graph['rpat_jax.data.dataset']  # The walk sees imports at all.
  cycles, index, low, stack, on_stack = [], {}, {}, [], set()

  def strongly_connected(node):  # Tarjan's algorithm: every component of more than one module is a cycle.
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in graph[node]:
      if target not in index:
        strongly_connected(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        cycles.append(sorted(component))
  for name in graph:
    if name not in index:
      strongly_connected(name)
  assert cycles == []


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
  """The check above can fail: two modules that import each other make one component."""
  package = tmp_path / 'rpat_jax'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'a.py').write_text('from rpat_jax import b\n')
  (package / 'b.py').write_text('def f():\n  from rpat_jax.a import g\n')
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
  modules = _modules()
  assert _imports(modules['rpat_jax.a'], modules) == {'rpat_jax.b'}
  assert _imports(modules['rpat_jax.b'], modules) == {'rpat_jax.a'}


def test_every_cpu_only_path_asks_the_one_gate():
  """No backend check but the gate's, and code outside rpat_jax/cpu reaches the CPU forms only through
  entry points that ask it."""
  gate = PACKAGE / 'cpu' / '__init__.py'
  for path in PACKAGE.rglob('*.py'):
    text = path.read_text()
    if path != gate:
      assert not re.search(r"default_backend\(\)\s*(==|!=|in\b)|platform\s*(==|!=)\s*'cpu'", text), path
    if path.parent.name != 'cpu':
      assert 'cpu.enabled()' not in text, f'{path}: the CPU forms and their gate stay in rpat_jax/cpu'
      used = set(re.findall(r'\b((?:convs|chunks|hoisted_jit|patch_conv|phase_conv|xla_flags)\.[A-Za-z_]\w*)\(',
                            text))
      assert used <= GATED_ENTRY_POINTS, (path, used - GATED_ENTRY_POINTS)
  for name in ('convs', 'chunks', 'hoisted_jit', 'xla_flags'):
    assert re.search(r'cpu\.(enabled|expected_before_start)\(\)', (PACKAGE / 'cpu' / f'{name}.py').read_text()), name
