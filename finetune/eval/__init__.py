"""Evaluation pieces: metrics (task scores), scoring (perplexity, log-probabilities), probes
(regression and safety), report (gates, chart, Markdown), diagnose (common-issue flags), benchmarks
(+ harness: lm-eval tasks; bench_report: their gates and Markdown) and judge (LLM-as-judge, pairwise).
finetune/evaluate.py runs them on a run; nothing here imports torch at module level.
"""
