"""Fine-Tune Studio: `python app.py` serves the app on http://127.0.0.1:7860 (on a Space, 0.0.0.0).

Builds the Blocks from ui/ and launches it (also as an MCP server); nothing else. Set FINETUNE_HOME to choose where runs,
datasets and built-in models are kept, and PORT / GRADIO_SERVER_PORT to change the port.
"""

import os

from finetune.access import set_listen_address
from ui import build_demo
from ui.layout import CSS

on_space = bool(os.environ.get("SPACE_ID"))
server_name = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1")
set_listen_address(server_name)  # a non-loopback address turns public mode on (before the UI is built)
demo = build_demo()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(
        server_name=server_name,
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860"))),
        max_file_size="200mb",
        css=CSS,
        footer_links=["api"],
        mcp_server=True,  # the named endpoints are MCP tools too (/gradio_api/mcp/)
    )
