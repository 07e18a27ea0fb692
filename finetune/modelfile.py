"""An Ollama `Modelfile` beside a GGUF: FROM, the chat TEMPLATE (Ollama's Go-template syntax), stops.

    chat_format(model_dir)                         -> "chatml" | "llama3" | "mistral" | "gemma" | "phi3" | None
    write_modelfile(model_dir, gguf_path, system=) -> {"path", "format", "stops"}

The format is read from the markers in the tokenizer's chat template (ChatML covers SmolLM and
Qwen). An unknown format is said in the file and the result; Ollama then has no template from us.
"""

from __future__ import annotations

import json
from pathlib import Path

# Marker in the chat template -> format; the first that matches wins (Phi-3 before ChatML-like tags).
_MARKERS = (("<|start_header_id|>", "llama3"), ("<start_of_turn>", "gemma"), ("[INST]", "mistral"),
            ("<|im_start|>", "chatml"), ("<|assistant|>", "phi3"))

TEMPLATES = {
    "chatml": ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
               '<|im_start|>assistant\n', ["<|im_start|>", "<|im_end|>"]),
    "llama3": ('{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
               '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n',
               ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "mistral": ('{{- range .Messages }}{{- if eq .Role "system" }}{{ .Content }}\n\n'
                '{{- else if eq .Role "user" }}[INST] {{ .Content }}[/INST]'
                '{{- else }} {{ .Content }}</s>{{ end }}{{- end }}', ["[INST]", "[/INST]"]),
    "gemma": ('{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
              '{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n', ["<start_of_turn>", "<end_of_turn>"]),
    "phi3": ('{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n',
             ["<|end|>", "<|user|>", "<|assistant|>"]),
}


def _tokenizer_config(model_dir: Path) -> dict:
    p = model_dir / "tokenizer_config.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def chat_template(model_dir: str | Path) -> str:
    model_dir = Path(model_dir)
    t = _tokenizer_config(model_dir).get("chat_template")
    if not t and (model_dir / "chat_template.jinja").exists():
        t = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return t if isinstance(t, str) else ""


def chat_format(model_dir: str | Path) -> str | None:
    t = chat_template(model_dir)
    return next((fmt for marker, fmt in _MARKERS if marker in t), None)


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('the system prompt may not contain """ (it would end the Modelfile string)')
    return f'"""{text}"""'


def write_modelfile(model_dir: str | Path, gguf_path: str | Path, *, system: str | None = None) -> dict:
    """Write `Modelfile` in the GGUF's folder; returns {"path", "format", "stops"}."""
    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    fmt = chat_format(model_dir)
    eos = _tokenizer_config(model_dir).get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    lines = [f"# Ollama Modelfile written by Fine-Tune Studio: `ollama create NAME -f {gguf_path.parent.name}/Modelfile`",
             f"FROM ./{gguf_path.name}", ""]
    stops: list[str] = []
    if fmt is None:
        lines += ["# Chat template: unknown (no ChatML, Llama-3, Mistral, Gemma or Phi-3 markers in the tokenizer's",
                  "# template); Ollama will use the template stored in the GGUF, if it can read it.", ""]
    else:
        template, stops = TEMPLATES[fmt]
        lines += [f"# Chat template: {fmt}", f"TEMPLATE {_quote(template)}", ""]
    if isinstance(eos, str) and eos and eos not in stops:
        stops = stops + [eos]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines += ["", f"SYSTEM {_quote(system)}"]
    path = gguf_path.parent / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": str(path), "format": fmt or "unknown", "stops": stops}
