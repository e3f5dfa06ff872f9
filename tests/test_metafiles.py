"""mim's model index: every config listed exactly once, in its folder's
metafile, with the paper's reference AP where the paper has a row, and a
README per folder; and mim finding them from this install as from the
wheel."""
import glob
import os.path as osp
import sys

import yaml
from mmengine.config.utils import _get_cfg_metainfo

from tool_helpers import CONFIGS, ROOT, mim_configs

PACKAGE = osp.join(ROOT, 'mmdet_gc')


def _index():
    return yaml.safe_load(
        open(osp.join(PACKAGE, '.mim', 'model-index.yml')))['Import']


def test_every_config_is_listed_exactly_once():
    listed = []
    for meta in _index():
        path = osp.join(PACKAGE, '.mim', meta)
        assert osp.isfile(path), meta
        data = yaml.safe_load(open(path))
        collections = {c['Name'] for c in data['Collections']}
        for c in data['Collections']:
            assert osp.isfile(osp.join(ROOT, c['README'])), c['README']
        for model in data['Models']:
            assert model['In Collection'] in collections
            assert osp.isfile(osp.join(ROOT, model['Config'])), model
            assert model['Name'] == osp.basename(model['Config'])[:-3]
            listed.append(model['Config'])
    assert sorted(listed) == CONFIGS
    assert sorted(_index()) == sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml')))


def test_mim_finds_every_config_from_the_editable_install(tmp_path):
    """The set-up's editable install, as the README makes it (the wheel's
    twin is in ``tests/test_wheel.py``)."""
    assert mim_configs(sys.executable, str(tmp_path)) == CONFIGS


def test_mmengine_finds_each_config_through_the_index():
    for config in CONFIGS:
        name = osp.relpath(config, 'configs')
        meta = _get_cfg_metainfo(PACKAGE, name)
        assert osp.isfile(osp.join(PACKAGE, '.mim', meta['Config']))


def test_paper_rows_carry_the_papers_reference_ap():
    data = yaml.safe_load(
        open(osp.join(ROOT, 'configs', 'mask_rcnn', 'metafile.yml')))
    r50 = next(m for m in data['Models']
               if m['Name'] == 'mask-rcnn_r50_fpn_sgd-gc_1x_coco')
    assert r50['Metadata']['Paper box AP with GC'] == 37.9
    assert r50['Metadata']['Paper mask AP with GC'] == 34.7
    assert 'Results' not in r50  # nothing measured with it yet


def _mmdet_ap(baseline):
    """mmdet 3.3's own box (and mask) AP for one of its configs, from its
    metafile."""
    import mmdet
    folder = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                      osp.dirname(baseline))
    data = yaml.safe_load(open(osp.join(folder, 'metafile.yml')))
    # mmdet's metafile writes the '+' of gn+ws/ URL-encoded.
    from urllib.parse import unquote
    model = next(m for m in data['Models']
                 if unquote(m['Config']) == f'configs/{baseline}')
    aps = {r['Task']: r['Metrics'] for r in model['Results']}
    box = aps['Object Detection']['box AP']
    mask = aps.get('Instance Segmentation', {}).get('mask AP')
    return box, mask


def _readme_rows():
    """The README's results rows that link one of our configs: (config,
    baseline, paper w/ GC, mmdet 3.3) as written."""
    import re
    text = open(osp.join(ROOT, 'README.md')).read()
    pattern = (r'^\| \[[^\]]+\]\((configs/[^)]+)\) \| `([^`]+)` \| [^|]+ \| '
               r'([^|]+) \| ([^|]+) \| [^|]+ \|$')
    return re.findall(pattern, text, re.M)


def test_the_readme_results_tables_agree_with_the_metafiles():
    """Each paper row of the README: our metafile's paper AP and mmdet's
    own metafile's AP for the baseline, as the README prints them."""
    ours = {}
    for meta in _index():
        for model in yaml.safe_load(open(osp.join(PACKAGE, '.mim',
                                                  meta)))['Models']:
            ours[model['Config']] = model
    rows = _readme_rows()
    assert len(rows) >= 11  # 5 Faster R-CNN and 6 Mask R-CNN rows
    for config, baseline, paper, mmdet_ap in rows:
        model = ours[config]
        assert model['Metadata']['Baseline Config'] == baseline, config
        box = model['Metadata'].get('Paper box AP with GC')
        mask = model['Metadata'].get('Paper mask AP with GC')
        if box is None:
            assert paper.strip() == '-', config
        else:
            expected = f'{box}' if mask is None else f'{box} / {mask}'
            assert paper.strip() == expected, config
        box, mask = _mmdet_ap(baseline)
        expected = f'{box}' if mask is None else f'{box} / {mask}'
        assert mmdet_ap.strip() == expected, config
