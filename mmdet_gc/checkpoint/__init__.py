"""Checkpoints: untrusted input, read as data through one door.

- :mod:`.door`: :class:`CheckpointDoor`, the one loader for every source
  MMEngine dispatches on (local paths, URLs, torch's hub cache, model-zoo
  names, ``last_checkpoint``, ``load_from``, ``init_cfg``), installed
  around the tools' runner;
- :mod:`.reader`: :func:`read_checkpoint`, the one ``torch.load`` (with
  ``weights_only=True`` and, for one load at a time, the stand-ins of
  :mod:`.stock`), and the checks of what MMEngine reads;
- :mod:`.nesting`: how deeply a file's pickle nests, measured before
  ``torch.load`` (a key nested too deeply crashes it);
- :mod:`.stock`: stock MMEngine files (``HistoryBuffer``, numpy) as data;
- :mod:`.run_checks`: what ``--resume`` acts on, against the run's objects;
- :mod:`.plain`: our runs' checkpoints as plain data that stock
  ``torch.load`` accepts (written and restored by
  :class:`~mmdet_gc.engine.hooks.PlainCheckpointHook`).

Nothing here changes torch's serialization settings.
"""
from .door import CheckpointDoor, hub_cache_file, torchvision_urls
from .errors import CheckpointError, ForeignCheckpointError
from .plain import TAG, from_plain, to_plain
from .reader import (check_contents, check_structure, convert_checkpoint,
                     convert_command, inspect_checkpoint, read_checkpoint)
from .run_checks import (RunObjects, build_run, check_resume_against_run,
                         take_config_settings)

__all__ = [
    'CheckpointDoor', 'hub_cache_file', 'torchvision_urls', 'CheckpointError',
    'ForeignCheckpointError', 'TAG', 'from_plain',
    'to_plain', 'check_contents', 'check_structure', 'convert_checkpoint',
    'convert_command', 'inspect_checkpoint', 'read_checkpoint', 'RunObjects',
    'build_run', 'check_resume_against_run', 'take_config_settings'
]
