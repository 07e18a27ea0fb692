"""Fine-Tune Studio's Gradio UI: one module per tab plus shared render helpers.

`build_demo()` assembles the five tabs (Plan, Dataset, Train, Evaluate, Compare). Handlers turn
widget values into engine calls and render the results; all work happens in finetune/.
"""

from .layout import build_demo

__all__ = ["build_demo"]
