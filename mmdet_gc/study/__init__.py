"""Paired GC studies and paired-run reports (Gradient Centralization: Yong
et al., ECCV 2020, arXiv:2004.01461).

- :mod:`.plan`: planning and running a study (arms x seeds);
- :mod:`.stats`: its paired statistics, read from a work dir, and report;
- :mod:`.report`: the paper-style table and curves of a few work dirs,
  read from MMEngine's logs as untrusted input.
"""
from .plan import (SEED_DIR, Arm, Plan, execute, make_arms, run_dir, run_name,
                   shift_dir, test_command, tool_command, train_command)
from .report import (HEADERS, METRICS, ReportError, Run, markdown_table,
                     plot_curves, read_run)
from .stats import (RunResult, mean_std, paired_stats, plot_study, read_study,
                    study_markdown, summarize, write_report)

__all__ = [
    'SEED_DIR', 'Arm', 'Plan', 'execute', 'make_arms', 'run_dir', 'run_name',
    'shift_dir', 'test_command', 'tool_command', 'train_command', 'HEADERS',
    'METRICS', 'ReportError', 'Run', 'markdown_table', 'plot_curves',
    'read_run', 'RunResult', 'mean_std', 'paired_stats', 'plot_study',
    'read_study', 'study_markdown', 'summarize', 'write_report'
]
