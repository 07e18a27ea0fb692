"""Fine-Tune Studio: `python app.py` serves the app on http://127.0.0.1:7860 (on a Space, 0.0.0.0).

Builds the Blocks from ui/ and launches it; nothing else. Set FINETUNE_HOME to choose where runs,
datasets and built-in models are kept, and PORT / GRADIO_SERVER_PORT to change the port.
"""

import os

from ui import build_demo
from ui.layout import CSS

demo = build_demo()

if __name__ == "__main__":
    on_space = bool(os.environ.get("SPACE_ID"))
    demo.queue(default_concurrency_limit=4).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860"))),
        max_file_size="200mb",
        css=CSS,
        footer_links=["api"],
    )
