"""The training child's speed pieces (issue 17): thread choice from timed steps, phases, FLOPs, MFU.

The thread tuner is driven with given step times here (the real one is exercised by every training
test, whose status must name the chosen count and why); no test depends on how fast this machine is.
"""

import json
from pathlib import Path

import pytest


def test_thread_candidates_halve_down_to_one():
    from finetune.speed import thread_candidates

    assert thread_candidates(1) == [1]
    assert thread_candidates(2) == [2, 1]
    assert thread_candidates(16) == [16, 8, 4, 1]
    assert all(c >= 1 for n in range(1, 70) for c in thread_candidates(n))


@pytest.mark.parametrize("fast", [1, 2])
def test_tuner_keeps_the_count_with_the_fastest_step_per_token(fast):
    import torch

    from finetune.speed import ThreadTuner

    decided = []
    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2, on_decision=lambda n, why: decided.append((n, why)))
        seen = []
        while not tuner.done:
            tuner.before_step()
            n = torch.get_num_threads()
            seen.append(n)
            tokens = 100 if len(seen) % 2 else 300  # batches of different lengths: compared per token
            per_token = 1e-4 if n == fast else 3e-4
            tuner.after_step(per_token * tokens * (5 if len(seen) == 1 else 1),  # the warm-up step is slow
                             {"input_ids": torch.zeros(1, tokens, dtype=torch.long)})
        assert seen == [2, 2, 1, 2, 1]  # warm-up on all cores, then the candidates interleaved
        assert decided and decided[0][0] == fast == torch.get_num_threads()
        assert f"{fast} of 2 cores" in decided[0][1] and "100 µs/token" in decided[0][1]
    finally:
        torch.set_num_threads(before)


def test_one_core_needs_no_measuring_and_a_short_run_still_decides():
    import torch

    from finetune.speed import ThreadTuner

    assert ThreadTuner(1).done
    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2)
        tuner.before_step()
        tuner.after_step(0.1, {"input_ids": torch.zeros(2, 8, dtype=torch.long)})  # only the warm-up ran
        assert tuner.decide() == (2, "2 cores (too few steps to compare thread counts)") and tuner.done
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("others", [0.0, 0.9, None])
def test_a_long_step_with_the_other_cores_idle_keeps_all_cores_without_trials(others):
    import torch

    from finetune.speed import LONG_STEP_S, ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2)
        ids = {"input_ids": torch.zeros(4, 1024, dtype=torch.long)}
        tuner.before_step()
        tuner.after_step(LONG_STEP_S * 3, ids, others)  # the warm-up step never decides
        assert not tuner.done
        tuner.before_step()
        tuner.after_step(LONG_STEP_S * 2, ids, others)
        if others == 0.0:  # idle others: no slower one-thread trial
            assert tuner.done and tuner.chosen == 2 == torch.get_num_threads()
        else:  # busy others (or unknown): the fewer-thread trial still runs
            assert not tuner.done and tuner.schedule[tuner.i] == 1
    finally:
        torch.set_num_threads(before)


def test_others_meter_counts_other_processes_not_this_one():
    import subprocess
    import sys
    import time

    from finetune.speed import OthersMeter, busy_cpu_s

    if busy_cpu_s() is None:
        pytest.skip("no /proc/stat here")
    m = OthersMeter()

    def idle() -> float:
        m.start()
        time.sleep(0.5)
        return m.cores()

    tries = []
    for _ in range(3):  # another test worker's load may change between the windows: take a steady try
        before = idle()
        m.start()
        t = time.process_time()
        while time.process_time() - t < 0.5:  # this process spins one core: not "others"
            pass
        own = m.cores()
        after = idle()
        tries.append((round(before, 2), round(own, 2), round(after, 2)))
        if own < max(before, after) + 0.6:  # counted, it would add a whole core to every try
            break
    else:
        raise AssertionError(f"this process's own CPU counted as others' (before, own, after): {tries}")
    m.start()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.5: pass"])
    busy.wait()
    assert m.cores() > 0.2  # a spinning child (1.5 s of one core) is another process's work


def test_flops_per_token_counts_frozen_and_trained_weights(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from finetune.modeling import load_model
    from finetune.speed import flops_per_token

    model = load_model("builtin:tiny-chat")
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = flops_per_token(model, 0)
    emb = model.get_input_embeddings().weight.numel()
    assert frozen == 4 * (sum(p.numel() for p in model.parameters()) - emb)  # the lookup is no matmul
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    trained = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert flops_per_token(lora, 0) == frozen + 6 * trained
    assert flops_per_token(lora, 100) > flops_per_token(lora, 0)  # attention grows with the length


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    from finetune import speed

    calls = []
    monkeypatch.setattr(speed, "measure_matmul_flops", lambda dtype: calls.append(dtype) or 5e10)
    hw = {"device": "cpu", "cpu": {"cpu_name": "Test CPU"}}
    assert speed.peak_flops(hw, "float32", 2, tmp_path) == 5e10
    assert speed.peak_flops(hw, "float32", 2, tmp_path) == 5e10 and calls == ["float32"]
    assert json.loads((tmp_path / speed.PEAK_CACHE).read_text()) == {"Test CPU|2|float32": 5e10}
    assert speed.peak_flops({"device": "cuda", "peak_tflops": 989}, "bfloat16", 1, tmp_path) == 989e12


def test_phases_accumulate_from_the_process_start():
    from finetune.speed import Phases

    ph = Phases()
    assert ph.out["start_and_imports"] > 0  # this process started before the test
    ph.mark("a")
    out = ph.mark("a")
    assert set(out) == {"start_and_imports", "a"} and out["a"] >= 0


def test_busy_cores_now_reads_proc_stat():
    import os

    from finetune.hardware import busy_cores_now

    busy = busy_cores_now(0.05)
    assert busy is None or 0 <= busy <= (os.cpu_count() or 1) + 0.01


def test_tuner_measures_again_after_recheck_steps(monkeypatch):
    import torch

    from finetune import speed

    monkeypatch.setattr(speed, "RECHECK_STEPS", 3)
    decided = []
    before = torch.get_num_threads()
    ids = {"input_ids": torch.zeros(1, 10, dtype=torch.long)}
    try:
        tuner = speed.ThreadTuner(2, on_decision=lambda n, why: decided.append(n))
        fast = 1
        for step in range(40):
            if tuner.done:
                tuner.tick()
                continue
            tuner.before_step()
            n = torch.get_num_threads()
            tuner.after_step((1e-3 if n == fast else 3e-3), ids)
            if len(decided) == 1:
                fast = 2  # other work ended: all cores pay now
        assert decided[:2] == [1, 2] and torch.get_num_threads() == decided[-1]
    finally:
        torch.set_num_threads(before)


def test_training_imports_leave_scikit_learn_and_scipy_out():
    """lm-eval installs scikit-learn and evaluate scipy; transformers would import them in every
    training child (~1 s each: assisted generation, object-detection losses). Loading and running a
    model still works, and scipy itself still imports for whoever asks for it."""
    import subprocess
    import sys

    code = ("import sys; from finetune.speed import import_training_stack; "
            "import_training_stack('lora', 'transformers', skip_unused=True); "
            "from finetune.modeling import load_for_inference, generate; "
            "m, t = load_for_inference('builtin:tiny-chat'); generate(m, t, ['hi'], max_new_tokens=2); "
            "print('sklearn' in sys.modules, 'scipy' in sys.modules); "
            "import scipy.optimize; print(callable(scipy.optimize.linear_sum_assignment))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parent.parent))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-2:] == ["False False", "True"]


def test_measuring_the_peak_leaves_the_global_random_state_alone():
    """The first MFU figure measures the peak mid-run: it must not shift the run's dropout masks."""
    import torch

    from finetune import speed

    torch.manual_seed(1)
    before = torch.get_rng_state()
    speed.measure_matmul_flops("float32", seconds=0.01, size=64)
    assert torch.equal(torch.get_rng_state(), before)
