"""GRPO from the app: the `train` API with the grpo_* settings (as the Train tab's reward picker sends
them), then the Train tab in headless Chromium: the reward picker appears only for method grpo, and
the finished run shows mean reward, reward per function, completion length and KL, with the reward
curves in the chart. Screenshots: FINETUNE_HOME/screenshots/grpo-*.png.

Run: `python -m pytest tests/test_grpo_ui.py -q` (about a minute).
"""

import json
import os
import re
import shutil
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _shot(page, home, name):
    d = home / "screenshots"
    d.mkdir(exist_ok=True)
    page.screenshot(path=str(d / f"grpo-{name}.png"), full_page=True)
    extra = os.environ.get("FTS_SHOTS_DIR")  # a copy for a person to look at, when asked
    if extra:
        os.makedirs(extra, exist_ok=True)
        page.screenshot(path=os.path.join(extra, f"x20a-grpo-{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def grpo_run(app_url, tmp_path_factory):
    from gradio_client import Client

    data = tmp_path_factory.mktemp("grpo") / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{b}=?", "answer": str(a + b)}) + "\n"
                            for a in range(4) for b in range(4)))
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="grpo.json_schema: is not valid JSON"):
        client.predict(model="builtin:tiny-chat", data=str(data), method="grpo", grpo_reward=["json"],
                       grpo_json_schema="{type: object", api_name="/train")
    run_id = client.predict(model="builtin:tiny-chat", data=str(data), method="grpo", learning_rate="2e-3",
                            epochs=1, batch_size=4, max_seq_len=64, lora_r=8, max_steps=3, logging_steps=1,
                            grpo_reward=["numeric", "format", "length"], grpo_reward_weights="1,0.5,0.5",
                            grpo_format_regex=r"\d", grpo_length_max_chars=20, grpo_num_generations=2,
                            grpo_max_completion_len=8, grpo_beta=0.05, api_name="/train")
    for _ in range(600):
        st = client.predict(run_id, api_name="/status")
        if st["state"] in ("completed", "failed", "stopped"):
            break
        time.sleep(1)
    assert st["state"] == "completed", st.get("error")
    return run_id, st


def test_train_api_takes_the_reward_settings(grpo_run, home):
    run_id, st = grpo_run
    cfg = json.loads((home / "runs" / run_id / "config.json").read_text())
    assert cfg["train"]["method"] == "grpo"
    assert cfg["grpo"]["reward"] == "numeric,format,length"
    assert cfg["grpo"]["num_generations"] == 2 and cfg["grpo"]["beta"] == 0.05
    ev = [e for e in st["events"] if e.get("reward") is not None]
    assert ev and set(ev[-1]["rewards"]) == {"numeric", "format", "length"} and ev[-1]["kl"] is not None


def test_reward_chart_is_resent_only_when_the_run_or_its_events_change(grpo_run):
    import gradio as gr

    from ui.grpo_panel import reward_curve

    run_id, st = grpo_run
    plot, shown = reward_curve(run_id)
    assert plot.visible is True and shown == {"run": run_id, "n": len(st["events"]), "generation": 0}
    again, shown2 = reward_curve(run_id, shown)  # the next tick, nothing new: nothing sent
    assert again == gr.skip() and shown2 == shown
    other, seen = reward_curve("", shown)  # another (no) run: the chart is hidden again
    assert other.visible is False and seen == {"run": "", "n": 0, "generation": 0}


def test_reward_chart_does_not_take_the_live_views_log_changes(grpo_run, home):
    # Both views follow the run through one shared follower: the chart reads only what the follower
    # already has, so a line added to train.log still reaches the live view's next tick.
    import gradio as gr

    from ui import train_live
    from ui.grpo_panel import reward_curve

    run_id, _ = grpo_run
    shown = train_live.poll(run_id, None)[6]
    with open(home / "runs" / run_id / "train.log", "a") as f:
        f.write("a new line for the live view\n")
    reward_curve(run_id, None)
    log = train_live.poll(run_id, shown)[3]
    assert log != gr.skip() and "a new line for the live view" in log


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_train_tab_shows_the_picker_and_reward_curves(grpo_run, app_url, home):
    from playwright.sync_api import expect

    from conftest import chromium_page

    run_id, _ = grpo_run
    with chromium_page(app_url, height=1400) as page:
        page.get_by_role("tab", name="Train").click()
        picker = page.locator("#train-grpo").first
        expect(picker).to_be_hidden(timeout=30_000)  # lora: no reward settings
        method = page.locator("#train-method input")
        method.click()
        method.fill("grpo")
        page.get_by_role("option", name="grpo", exact=True).click()
        expect(picker).to_be_visible(timeout=10_000)
        expect(picker.get_by_role("checkbox", name="length")).to_be_visible()
        run_box = page.locator("input[aria-label='Run']:visible").first
        run_box.click()
        run_box.fill(run_id)
        run_box.press("Enter")
        metrics = page.locator("#train-metrics")
        expect(metrics).to_contain_text("mean reward", timeout=30_000)
        expect(metrics).to_contain_text("completion length")
        expect(metrics).to_contain_text(re.compile(r"numeric \d"))
        rewards = page.locator("#reward-plot")
        expect(rewards).to_contain_text("mean reward", timeout=30_000)
        expect(rewards).to_contain_text("reward: numeric")
        expect(rewards.locator(".mark-line path").first).to_be_visible()
        page.wait_for_timeout(1000)
        _shot(page, home, "train")
