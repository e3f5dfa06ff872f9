"""The package's layers: no module imports one that imports it back, and
each layer imports only layers below it (Gradient Centralization, Yong et
al., ECCV 2020: the optimizer maths at the bottom, the CLI on top)."""
import ast
import os
import os.path as osp

import pytest

from tool_helpers import ROOT

PACKAGE = osp.join(ROOT, 'mmdet_gc')

# Lowest first; a module takes the layer of its longest matching prefix.
LAYERS = {
    'mmdet_gc.utils': 0,
    'mmdet_gc.optim.gc': 0,
    'mmdet_gc.optim.fused': 1,
    'mmdet_gc.optim': 2,
    'mmdet_gc.datasets': 2,
    'mmdet_gc.checkpoint': 3,
    'mmdet_gc.engine': 4,
    'mmdet_gc.study': 5,
    'mmdet_gc.registry': 5,
    'mmdet_gc.cli': 6,
    'mmdet_gc.__main__': 7,
}
ROOT_PACKAGE = 'mmdet_gc'  # importing it registers everything: any layer


def modules():
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = osp.join(folder, name)
            parts = osp.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            out['.'.join(parts)] = path
    return out


def imports(module, path, known):
    """The package modules ``module`` imports, anywhere in its source."""
    is_package = path.endswith('__init__.py')
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split('.')
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = '.'.join(base + ([node.module]
                                          if node.module else []))
            else:
                prefix = node.module
            names = [f'{prefix}.{a.name}' for a in node.names]
            names = [n if n in known else prefix for n in names]
        else:
            continue
        found.update(n for n in names if n in known and n != module)
    return found


def layer(module):
    match = max((p for p in LAYERS if module == p or
                 module.startswith(p + '.')), key=len, default=None)
    assert match is not None, f'{module} has no layer'
    return LAYERS[match]


def graph():
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_no_import_cycle():
    edges = graph()
    state, stack = {}, []

    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 'open':
                cycle = stack[stack.index(n):] + [n]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 'done'

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_each_layer_imports_only_layers_below():
    bad = [
        f'{m} (layer {layer(m)}) imports {n} (layer {layer(n)})'
        for m, targets in graph().items() if m != ROOT_PACKAGE
        for n in targets if n != ROOT_PACKAGE and layer(n) > layer(m)
    ]
    assert bad == []


def test_the_graph_sees_the_imports():
    """The checks above are not vacuous."""
    edges = graph()
    assert 'mmdet_gc.optim.gc' in edges['mmdet_gc.optim.sgd']
    assert 'mmdet_gc.optim.fused' in edges['mmdet_gc.optim.sgd']
    assert edges['mmdet_gc.optim.gc'] == set()
    assert edges['mmdet_gc.optim.fused'] <= {
        'mmdet_gc.optim.gc', 'mmdet_gc.utils.messages'
    }


@pytest.mark.parametrize('old', [
    'mmdet_gc.functional', 'mmdet_gc.fused', 'mmdet_gc.diagnostics',
    'mmdet_gc.report', 'mmdet_gc.runner_utils', 'mmdet_gc.data',
    'mmdet_gc.cli.runner', 'mmdet_gc.study.report'
])
def test_no_shim_serves_a_layout_that_was_never_released(old):
    """``import mmdet_gc`` installs no import finder: module paths of a
    layout that was never released do not import."""
    import importlib
    import sys

    import mmdet_gc  # noqa: F401
    assert not any('mmdet_gc' in type(f).__module__ for f in sys.meta_path)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_readme_and_docs_links_resolve():
    """Every relative link of the README and of docs/en/ names a file that
    is there."""
    import glob
    import re
    pages = [osp.join(ROOT, 'README.md')] + glob.glob(
        osp.join(ROOT, 'docs', 'en', '*.md')) + glob.glob(
            osp.join(ROOT, 'configs', '*', 'README.md'))
    missing = []
    for page in pages:
        for target in re.findall(r'\]\(([^)#\s]+)\)', open(page).read()):
            if '://' in target:
                continue
            if not osp.exists(osp.join(osp.dirname(page), target)):
                missing.append(f'{osp.relpath(page, ROOT)}: {target}')
    assert missing == []
    assert len(open(pages[0]).read().splitlines()) <= 200


def test_every_argument_of_every_command_has_help():
    import argparse
    from unittest import mock

    from mmdet_gc.cli import COMMANDS
    missing = []
    for name in COMMANDS:
        module = __import__(f'mmdet_gc.cli.{name}', fromlist=['main'])
        seen = []

        def grab(parser, *args, **kwargs):
            seen.append(parser)
            raise SystemExit(0)

        with mock.patch.object(argparse.ArgumentParser, 'parse_args', grab):
            try:
                module.main(['x'])
            except SystemExit:
                pass
        assert seen, name
        missing += [
            f'{name} {a.option_strings or a.dest}' for a in seen[0]._actions
            if not a.help and a.dest != 'help'
        ]
    assert missing == []
