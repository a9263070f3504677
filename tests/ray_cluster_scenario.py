"""Multi-node scenario run in its own process (a driver connects to one Ray cluster only).

``nodes`` worker nodes (3: one spare; 2: none), each with one ``fake_gpu`` standing in for a GPU; two generation
actors; once the first shards are committed, the node of a busy actor is removed. Prints a JSON summary.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(root: str, n_nodes: int) -> None:
    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    from facelift.dataset import Dataset
    from facelift.flows.build_dataset import build_dataset

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1, resources={"fake_gpu": 1}) for _ in range(n_nodes)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    result: dict = {}
    overrides = {"plan.shard_size": 2, "ray.num_workers": 2, "ray.num_cpus_per_worker": 1,
                 "ray.resources": {"fake_gpu": 1}, "ray.max_restarts": 2}
    thread = threading.Thread(target=lambda: result.update(build_dataset(count=24, root=root, overrides=overrides)))
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(glob.glob(f"{root}/datasets/*/shards/[0-9]*.parquet")) < 2:
        time.sleep(0.2)
    first = sorted(glob.glob(f"{root}/datasets/*/shards/[0-9]*.parquet"))[0]
    victim_node = pq.read_table(first, columns=["worker"]).column(0)[0].as_py().split(":")[2]
    victim = next(n for n in nodes if n.node_id.startswith(victim_node))
    cluster.remove_node(victim)
    thread.join(timeout=600)
    manifest = Dataset.open(result["dataset_uri"]).manifest()
    print(json.dumps({  # noqa: T201 - the test reads this line
        "pairs": len(manifest), "unique": bool(manifest["pair_id"].is_unique),
        "removed_node": victim_node, "nodes_per_shard": manifest.groupby("shard")["worker"].first()
        .str.split(":").str[2].tolist(), "generated": result.get("generated_pairs"),
    }))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
