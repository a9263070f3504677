"""The product path for learning tests, run as a user runs it: ``facelift build`` (tiny profile), the pairs'
pictures replaced by a known mapping (``tests/learning_data.py``), ``facelift train`` with the CLI's defaults
apart from flavor, steps, batch and resolution, then ``facelift enhance`` on fresh pictures, scored.

Every command is a subprocess of ``python -m facelift.cli.main``, so its defaults, its Prefect flow and its Ray
start are the ones users get. Used by tests/test_product_learning.py and bench/tone_heads.py's product mode.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from learning_data import MAPPINGS, as_tensor, make_pairs, scores
from PIL import Image

from facelift.dataset import Dataset, shard_schema
from facelift.models.losses import LPIPS_BACKBONE_ENV, save_random_lpips_backbone
from facelift.stack.local import PrefectServer

log = logging.getLogger(__name__)


def facelift(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 900) -> str:
    """Run one ``facelift`` command; its output, or an AssertionError with the output's tail."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "facelift.cli.main", *args], env=env, cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s)
    log.info("facelift %s: %.1f s", args[0], time.monotonic() - t0)
    assert proc.returncode == 0, f"facelift {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}"
    return proc.stdout


def cli_env(cache_dir: Path, server: PrefectServer | None = None) -> dict[str, str]:
    """The environment a user's shell would have: the tiny-model cache, the LPIPS backbone file the U-Net's loss
    needs (``$FACELIFT_LPIPS_BACKBONE``; random weights here: nothing is downloaded), a short Ray temp folder and,
    with ``server``, ``PREFECT_API_URL`` of a running Prefect server (as ``make stack`` sets it); without one each
    command starts Prefect's ephemeral server."""
    backbone = cache_dir / "alexnet-random.pth"
    if not backbone.exists():
        save_random_lpips_backbone(backbone)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "FACELIFT_CACHE": str(cache_dir), LPIPS_BACKBONE_ENV: str(backbone), "RAY_TMPDIR": ray_tmp,
           "PYTHONUNBUFFERED": "1"}
    return server.env(env) if server else env


def build(root: Path, count: int, dataset_id: str, env: dict[str, str]) -> str:
    """``facelift build --count N --out ROOT --dataset-id ID`` (tiny profile); the dataset's URI."""
    facelift(["build", "--count", str(count), "--out", str(root), "--dataset-id", dataset_id], env, root.parent)
    return str(root / "datasets" / dataset_id)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def replace_pictures(uri: str, mapping: str, seed: int) -> int:
    """Replace every pair's schnell and dev pictures (and their sha256 provenance, in the shards and the
    manifest) with a fresh pair of ``mapping`` at the dataset's size. Returns the number of pairs."""
    ds = Dataset.open(uri)
    rng = np.random.default_rng(seed)
    hashes: dict[str, dict[str, str]] = {}
    for index in ds.committed_shards():
        rows = ds.read_shard(index).to_pylist()
        for row in rows:
            schnell, dev = MAPPINGS[mapping](rng, int(row["width"]))
            for key, img in (("schnell", schnell), ("dev", dev)):
                data = _png(img)
                row[f"{key}_image"] = {"bytes": data, "path": f"{row['pair_id']}-{key}.png"}
                row[f"{key}_sha256"] = hashlib.sha256(data).hexdigest()
            hashes[row["pair_id"]] = {k: row[k] for k in ("schnell_sha256", "dev_sha256")}
        ds.commit_shard(index, pa.Table.from_pylist(rows, schema=shard_schema()))
    manifest = ds.manifest()
    for key in ("schnell_sha256", "dev_sha256"):
        manifest[key] = manifest["pair_id"].map(lambda p, k=key: hashes[p][k])
    ds.write_manifest(manifest)
    return len(hashes)


def train(uri: str, head: str, cwd: Path, env: dict[str, str], steps: int, size: int, run_id: str,
          extra: list[str] | None = None) -> dict[str, Any]:
    """``facelift train URI --head H --flavor debug --max-steps S --batch-size 4 --resolution R`` (every other
    option at the CLI's default), run in ``cwd`` (``uri`` may be relative to it); the run's ``run.json`` and
    ``metrics.json``, with its ``run_uri``."""
    facelift(["train", uri, "--head", head, "--flavor", "debug", "--max-steps", str(steps), "--batch-size", "4",
              "--resolution", str(size), "--run-id", run_id, *(extra or [])], env, cwd)
    run_uri = (cwd / uri).resolve().parents[1] / "runs" / run_id
    return {**json.loads((run_uri / "run.json").read_text()), "run_uri": str(run_uri),
            "metrics": json.loads((run_uri / "metrics.json").read_text())}


def enhance_and_score(run_uri: str, mapping: str, size: int, work: Path, env: dict[str, str],
                      n: int = 24) -> dict[str, float]:
    """``facelift enhance`` on ``n`` fresh schnell pictures of ``mapping`` (never in a dataset), scored against
    their dev pictures: L1 and colour residual, each as a multiple of the identity's."""
    x, y = make_pairs(mapping, size, n, seed=20261207)
    src, dst = work / "fresh", work / "enhanced"
    src.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray(((img.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()).save(
            src / f"{i:03d}.png")
    facelift(["enhance", str(src), str(dst), "--head", run_uri, "--device", "cpu"], env, work)
    z = as_tensor([Image.open(dst / f"{i:03d}.png").convert("RGB") for i in range(n)])
    return scores(x, y, z)


__all__ = ["MAPPINGS", "build", "cli_env", "enhance_and_score", "facelift", "replace_pictures", "train"]
