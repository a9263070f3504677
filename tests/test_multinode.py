"""Scale out: shards spread across Ray nodes; a node removed mid-run -> its shards run elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def test_node_loss_mid_run_loses_and_duplicates_nothing(tmp_path, cache_dir):
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # AF_UNIX socket paths must stay < 108 bytes
    env = {**os.environ, "FACELIFT_CACHE": str(cache_dir), "RAY_TMPDIR": ray_tmp}
    script = Path(__file__).with_name("ray_cluster_scenario.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 24 and summary["unique"] and summary["generated"] == 24
    nodes = summary["nodes_per_shard"]
    assert len(set(nodes)) >= 3  # two nodes at first, then the replacement node took over
    assert summary["removed_node"] in nodes[:4] and nodes[-1] != summary["removed_node"]
