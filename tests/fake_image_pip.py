"""`pip` inside tests/fake_jobs.py's stand-in for a stock image (the local Python plays the image's).

The test machine has no network, so `pip install` does here what the real one would, offline:
- a requirement (`NAME==VERSION`, from the command line or `-r FILE`) must already be met by this
  Python, as the stock image's torch meets the torch pin; an unmet one fails the job, naming it;
- a wheel file is installed with `--no-deps --no-index` into the job's own folder FAKE_IMAGE_SITE
  (first on the job's PYTHONPATH), so the code the job runs is the wheel's, not the checkout's.
Every call is appended to FAKE_IMAGE_SITE/../pip.log as one JSON line (what was asked, what was met).
"""

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement


def _parse(args: list[str]) -> tuple[list[str], list[str]]:
    reqs, wheels, it = [], [], iter(args)
    for a in it:
        if a in ("-r", "--requirement"):
            lines = Path(next(it)).read_text().splitlines()
            reqs += [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
        elif a.endswith(".whl"):
            wheels.append(a)
        elif not a.startswith("-"):
            reqs.append(a)
    return reqs, wheels


def _unmet(reqs: list[str]) -> list[str]:
    out = []
    for line in reqs:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            out.append(f"{line} (have {have})")
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "install":
        print(f"fake image pip: only `pip install` is known here, not {argv}", file=sys.stderr)
        return 2
    site = Path(os.environ["FAKE_IMAGE_SITE"])
    reqs, wheels = _parse(argv[1:])
    unmet = _unmet(reqs)
    with open(site.parent / "pip.log", "a") as log:
        log.write(json.dumps({"requirements": reqs, "wheels": [Path(w).name for w in wheels], "unmet": unmet}) + "\n")
    if unmet:
        print("ERROR: no network in this test image, and not installed: " + "; ".join(unmet), file=sys.stderr)
        return 1
    if wheels:
        return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                                "--target", str(site), *wheels])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
