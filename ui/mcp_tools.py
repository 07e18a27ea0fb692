"""The app as an agent sees it through MCP (`mcp_server=True`, streamable HTTP at /gradio_api/mcp/).

Applied once to the built Blocks (`for_agents`, before guard.guard_demo), plus Gradio's MCP server
taught to answer in JSON (`JsonMCPServer`):
  - the tools are exactly the contract API names (DESIGN.md section 2), each described for an agent:
    what it does, what it returns, units; any other public event (e.g. a Dataframe's load event,
    `runs_frame_1`) is made UI-only;
  - every field that accepts a custom value (a Dropdown with allow_custom_value: the model, the
    dataset, a run id...) is a free string in the schemas, not an enum of today's choices;
  - results are JSON text (Gradio would send Python repr, with single quotes); in public mode they
    name no server folder (finetune.sources.hide_server_paths). Errors never do (ui/guard.py).
A new endpoint is a tool only once it is listed in TOOLS.
"""

from __future__ import annotations

import json
import types

import gradio as gr
import gradio.mcp

TOOLS = {
    "plan": "Recommend a fine-tuning method (LoRA, QLoRA, full, DPO...) for a model, a task and a hardware target, "
            "and estimate memory (GB), time (hours) and cost (USD). `model` is any Hub id, local folder or builtin id. "
            "Returns a JSON object: method, fits, vram_gb, time_h, cost_usd, reasons, hyperparameters, python_script, "
            "trl_command.",
    "inspect_dataset": "Inspect a dataset without changing it: detect its format (alpaca, messages, sharegpt, preference...), "
                       "convert it, and report quality problems, token-length statistics (tokens) and the share of "
                       "tokens that would be trained. `source` is builtin:demo, a saved dataset name, hub:owner/name or "
                       "an uploaded file. Returns a JSON object: source, format, kind, rows, rows_valid, issues, quality_score, "
                       "token_stats, trained_tokens, preview.",
    "prepare_dataset": "Convert, clean and split a dataset into train/validation files saved under a name (val_ratio is a "
                       "fraction, 0-1). Returns a JSON object: name, dir, rows_train, rows_validation, cleaning.",
    "augment_dataset": "Add paraphrased or self-instruct rows to a dataset's training split and save it as a new "
                       "prepared dataset. Returns a JSON object like prepare_dataset's.",
    "train": "Check and start a training run on this machine. Returns its run id (a JSON string) at once; follow it "
             "with `status` until state is completed, failed or stopped. `model` is any Hub id, local folder or builtin id; "
             "`data` a dataset source as in inspect_dataset; learning_rate e.g. 2e-4; max_seq_len in tokens. "
             "method grpo: prompts (with reference answers) scored by grpo_reward, a list of exact, numeric, format, "
             "json, length; grpo_reward_weights e.g. '1,0.5'; batch_size a multiple of grpo_num_generations.",
    "train_jobs": "Start a training run on Hugging Face Jobs (flavor e.g. a10g-small, timeout e.g. 2h). Returns its run id "
                  "(a JSON string) at once; follow it like a local run with `status` and `stop`.",
    "status": "A run's status: state (queued, running, stopping, stopped, failed, completed), step, total_steps, "
              "progress (percent), latest loss and eval_loss, queue_position, events (per logged step: step, loss, "
              "learning_rate, tokens_per_s, elapsed_s in seconds), artifact (the adapter's place). Returns a JSON object.",
    "stop": "Stop a run cleanly: it finishes the current step, saves, and ends as stopped. Returns a JSON object "
            "with the run's new state.",
    "force_stop": "Kill a run now, without a final save; it can resume from its last complete checkpoint. Returns a "
                  "JSON object with the run's new state.",
    "runs": "List the runs you may see, newest first. Returns a JSON array of objects: run_id, state, model, method, "
            "data, step, total_steps, loss, eval_loss, created, duration_s (seconds).",
    "evaluate": "Evaluate a completed run against its base model on its validation rows (max_examples rows at most): "
                "perplexity, exact match, ROUGE-L, gates and regressions. Optional: benchmarks (built-in names such as "
                "builtin:capitals-mc), benchmark_file (an uploaded JSONL of {question, choices, answer} or {prompt, "
                "answer} rows), tasks (lm-eval task names, comma-separated; private app only), judge (a model that "
                "compares base and fine-tuned answers pairwise in both orders). Slow (minutes). Returns the report as "
                "a JSON object, with `benchmarks` ({task: {base, tuned, metric, n, delta}}) and `judge` ({win_rate, "
                "wins, losses, ties, n, judge_model, pairs}) when asked.",
    "diagnose": "Flag common training problems of a run (overfitting, underfitting, instability, forgetting, mode "
                "collapse) with evidence and suggested settings. Returns a JSON object: run_id, flags.",
    "compare": "Answer the same prompts (one per line) with the base model and up to four runs, same greedy decoding "
               "and seed, max_new_tokens tokens each; with latency (seconds). Returns a JSON object: rows, latency.",
    "ab_pair": "Two of the chosen models (\"base\" or run ids) answer one prompt, sides shuffled and anonymous, for a "
               "blind vote. Returns a JSON object: pair_id, a, b.",
    "vote": "Record a blind vote on a pair from ab_pair: choice A, B or tie. Returns a JSON object that reveals the "
            "two models.",
    "export_votes": "Write the recorded votes as a prompt/chosen/rejected preference dataset for DPO. Returns a JSON "
                    "object: path, rows.",
    "sweep": "Start a hyperparameter search (Optuna) for a model and dataset: learning rate, epochs and LoRA "
             "rank/alpha/dropout around the Plan's settings, each trial a normal run, bad trials pruned on validation "
             "loss. trials, budget_min (minutes) and budget_usd (US dollars at the hardware tier's hourly price) are "
             "optional (0 = not set); objective is eval_loss or a task metric (exact_match, rougeL...). Returns the "
             "study id (a JSON string) at once; follow it with `sweep_status`.",
    "sweep_status": "A hyperparameter search: state (queued, running, stopping, completed, stopped, failed, "
                    "interrupted), trials (number, run_id, params, state complete/pruned/failed/stopped/running, value "
                    "of the objective, steps), best ({number, run_id, value, params}), importance (per parameter, "
                    "sums to 1, once 3 trials are complete) and plan (notes on what the budget bought). Returns a "
                    "JSON object.",
    "sweep_stop": "Stop a hyperparameter search: its running trial stops cleanly (saved) and no new trial starts. "
                  "Returns the study as a JSON object.",
    "push": "Push a run's adapter (or merged weights, or a GGUF file) to the Hugging Face Hub as OWNER/NAME in one "
            "commit; new repos are private unless public is true. Returns a JSON object: url, commit, files.",
    "merge": "Merge two or more completed LoRA runs on the same base model into a new run (PEFT add_weighted_adapter). "
             "method: linear, ties (TIES), dare (DARE-TIES), dare_linear or cat; weights: one number per run, "
             "comma-separated (empty: 1/n each for linear/dare_linear/cat, 1 each for ties/dare); density: share of "
             "each update kept, 0-1 (ties and dare only). Full fine-tunes, DoRA and runs on other bases are refused. "
             "Returns a JSON object: run_id (evaluate, compare or push it like any run), method, combination_type, "
             "weights, density, rank, sources, notes, summary.",
    "chat": "Chat with the base model and up to three runs of one base (`models`: \"base\" and run ids, comma-separated): "
            "each answers `message` after its own history (`history`: JSON {model: [{role, content}]}, {} to start), "
            "through the base's chat template; temperature 0 = greedy; streamed. Returns a JSON object: models, answers, "
            "histories (pass back as history for the next turn), done.",
    "chat_save_row": "Append one training row {\"messages\": [...]} (`messages`: JSON list of {role, content} ending with "
                     "the assistant answer to keep) to the saved dataset `dataset` (NAME.jsonl, created if missing). "
                     "Returns a JSON object: dataset, rows (the dataset's row count).",
    "export": "Export a run locally: merged safetensors (merged=true) and/or a GGUF (gguf: f16, bf16, q8_0 or q4_k_m) "
              "with an Ollama Modelfile, each loaded back and compared with the merged model. Returns a JSON object "
              "(out, files, agreement, modelfile, gguf) and the files to download.",
}


def _free_string(component) -> dict:
    """The schema of a field that takes any value: a string (or a list of strings), not an enum."""
    return {"type": "array", "items": {"type": "string"}} if component.multiselect else {"type": "string"}


def for_agents(demo: gr.Blocks) -> gr.Blocks:
    """Tools named and described for agents, free-text fields, UI-only events hidden (call before guard_demo)."""
    for block in demo.blocks.values():
        if isinstance(block, gr.Dropdown) and block.allow_custom_value:
            block.api_info = types.MethodType(_free_string, block)
    for block_fn in demo.fns.values():
        if block_fn.api_visibility == "private":
            continue
        if block_fn.api_name in TOOLS:
            block_fn.api_description = TOOLS[block_fn.api_name]
        else:
            block_fn.api_visibility = "private"
    gradio.mcp.GradioMCPServer = JsonMCPServer  # read by gr.Blocks.launch(mcp_server=True)
    return demo


def _json_text(value) -> str:
    from finetune.access import public_mode
    from finetune.sources import hide_server_paths

    text = json.dumps(value, ensure_ascii=False, default=str)
    return hide_server_paths(text) if public_mode() else text


class JsonMCPServer(gradio.mcp.GradioMCPServer):
    """Gradio's MCP server, answering every tool call with JSON text instead of Python repr."""

    def postprocess_output_data(self, data, root_url: str):
        from gradio_client import utils as client_utils

        out = []
        for item in data:
            if client_utils.is_file_obj_with_meta(item):  # files and images: Gradio's own content types
                out.extend(super().postprocess_output_data([item], root_url))
            else:
                out.append(self.types.TextContent(type="text", text=_json_text(item)))
        return out
