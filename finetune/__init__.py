"""Fine-Tune Studio engine: plan, prepare data, train, evaluate and compare language-model fine-tunes.

Pure Python with lazy heavy imports: `import finetune` pulls in neither gradio, torch nor unsloth.
The UI (ui/), the CLI (`python -m finetune ...`), the Gradio API and the tests all call these
functions. See README.md for the contracts (home folder, run folder, CLI and API names).
"""

__version__ = "0.1.0"
