"""mim's model index: every config listed exactly once, in its folder's
metafile, with the paper's reference AP where the paper has a row, and a
README per folder (Gradient Centralization, Yong et al., ECCV 2020)."""
import glob
import os.path as osp

import yaml
from mmengine.config.utils import _get_cfg_metainfo

from tool_helpers import ROOT

PACKAGE = osp.join(ROOT, 'mmdet_gc')


def _index():
    return yaml.safe_load(
        open(osp.join(PACKAGE, '.mim', 'model-index.yml')))['Import']


def test_every_config_is_listed_exactly_once():
    configs = sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '*', '*.py')))
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
    assert sorted(listed) == configs
    assert sorted(_index()) == sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml')))


def test_mmengine_finds_each_config_through_the_index():
    for path in glob.glob(osp.join(ROOT, 'configs', '*', '*.py')):
        name = osp.relpath(path, osp.join(ROOT, 'configs'))
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
