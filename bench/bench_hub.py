"""Hub benchmark: push timings and GGUF fidelity for a tiny LoRA run, against the loopback test Hub.

    python bench/bench_hub.py

Trains builtin:tiny-chat for a few steps in a private home folder, then prints, side by side:
  - seconds for a plain adapter push, and for adapter + merged + GGUF q8_0 (one commit each);
  - commits and POSTs when the Hub answers the first two commit attempts with 503
    (baseline: huggingface_hub's create_commit alone raises on the first 503 and commits nothing);
  - GGUF f16 and q8_0: file size, max |logit difference| vs the merged model, argmax agreement.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FINETUNE_HOME", tempfile.mkdtemp(prefix="fts-bench-hub-"))
os.environ["HF_HUB_DISABLE_XET"] = "1"


def main() -> None:
    from tests.fake_hub import FakeHub

    hub = FakeHub()
    hub.add_user("bench", "hf_bench_write")
    url = hub.start()
    os.environ.update(HF_ENDPOINT=url, HF_HUB_OFFLINE="0")
    from huggingface_hub import constants

    constants.ENDPOINT, constants.HF_HUB_OFFLINE = url, False
    constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"

    from finetune.config import default_run_config
    from finetune.gguf_export import check_gguf, export_gguf
    from finetune.hub import merge_run, push_run
    from finetune.runs import create_run, run_dir
    from finetune.train import train_run

    cfg = default_run_config("builtin:tiny-chat", "builtin:demo", max_steps=4, epochs=1.0, eval_steps=4,
                             save_steps=4, logging_steps=1)
    run_id = create_run(cfg)
    t = time.time()
    assert train_run(run_dir(run_id)) == 0
    print(f"tiny LoRA run (4 steps): {time.time() - t:.1f} s")

    t = time.time()
    r = push_run(run_id, "bench/adapter", token="hf_bench_write")
    print(f"push adapter: {time.time() - t:.2f} s, {len(r['files'])} files, 1 commit")
    t = time.time()
    r = push_run(run_id, "bench/full", token="hf_bench_write", merged=True, gguf="q8_0")
    print(f"push adapter + merged + GGUF q8_0: {time.time() - t:.2f} s, {len(r['files'])} files, 1 commit")

    hub.fail_commits_before, posts = 2, hub.commit_posts
    push_run(run_id, "bench/retry", token="hf_bench_write", backoff_s=0.05)
    print(f"two injected 503s: ours -> {hub.commits_made('bench/retry')} commit in {hub.commit_posts - posts} POSTs; "
          "plain create_commit -> raises at the first 503, 0 commits")

    with tempfile.TemporaryDirectory() as tmp:
        merged = merge_run(run_id, Path(tmp) / "merged")
        ref = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
        print(f"merged safetensors (fp32): {ref / 1e6:.2f} MB")
        for q in ("f16", "q8_0"):
            out = export_gguf(merged, Path(tmp) / f"m-{q}.gguf", q)
            c = check_gguf(merged, out)
            print(f"GGUF {q:5s}: {c['size_bytes'] / 1e6:.2f} MB, max |dlogit| {c['max_abs_diff']:.4f} "
                  f"(logit scale {c['logit_scale']:.2f}), argmax agreement {100 * c['argmax_agreement']:.1f}%")
    hub.stop()


if __name__ == "__main__":
    main()
