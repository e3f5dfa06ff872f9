"""Paired GC studies and paired-run reports.

- :mod:`.arms`: a study's arms and the folders they train into;
- :mod:`.plan`: planning and running a study (arms x seeds);
- :mod:`.reading`: a run's or a study's work dir, read as untrusted input;
- :mod:`.stats`: a study's paired statistics and learning-rate sweep;
- :mod:`.writing`: the reports' markdown tables, JSON and files;
- :mod:`.figures`: the reports' figures.
"""
from .arms import SEED_DIR, Arm, make_arms, run_dir, run_name, shift_dir
from .figures import plot_curves, plot_study, plot_sweep
from .plan import Plan, execute, test_command, tool_command, train_command
from .reading import (HEADERS, METRICS, ReportError, Run, RunResult, read_run,
                      read_study)
from .stats import mean_std, paired_stats, summarize, sweep
from .writing import (markdown_table, study_markdown, sweep_markdown,
                      write_report)

__all__ = [
    'SEED_DIR', 'Arm', 'Plan', 'execute', 'make_arms', 'run_dir', 'run_name',
    'shift_dir', 'test_command', 'tool_command', 'train_command', 'HEADERS',
    'METRICS', 'ReportError', 'Run', 'markdown_table', 'plot_curves',
    'read_run', 'RunResult', 'mean_std', 'paired_stats', 'plot_study',
    'plot_sweep', 'read_study', 'study_markdown', 'summarize', 'sweep',
    'sweep_markdown', 'write_report'
]
