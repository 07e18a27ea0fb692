"""Evaluation pieces: metrics (task scores), scoring (perplexity, log-probabilities), probes
(regression and safety), report (gates, chart, Markdown) and diagnose (common-issue flags).
finetune/evaluate.py runs them on a run; nothing here imports torch at module level.
"""
