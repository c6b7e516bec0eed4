"""Evaluation statistics, reports, plots and the human-evaluation round trip.

Plots load matplotlib, so `safecomp.eval.plots` is imported on use, not here.
"""
from safecomp.eval.human import export_pairs
from safecomp.eval.human import format_win_rates
from safecomp.eval.human import load_ratings
from safecomp.eval.human import Rating
from safecomp.eval.human import score_ratings
from safecomp.eval.human import unblind
from safecomp.eval.human import win_rates
from safecomp.eval.report import format_markdown
from safecomp.eval.report import format_table
from safecomp.eval.report import write_report
from safecomp.eval.stats import Estimate
from safecomp.eval.stats import mean_ci
from safecomp.eval.stats import paired_comparison
from safecomp.eval.stats import PAIRED_METRICS
from safecomp.eval.stats import proportion_ci
from safecomp.eval.stats import sign_flip_pvalue
from safecomp.eval.stats import summarize
from safecomp.eval.stats import wilson_interval
