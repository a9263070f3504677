"""Training input benchmark: pairs/s that the product's input pipeline delivers to one training worker.

Real input, not synthetic tensors: a dataset of portrait-like 512² PNG pairs (~460 KB each, smooth shapes
plus sensor-like noise) in the project's shard format, read from local disk and from a SeaweedFS S3 server,
through ``PairStream`` (decode on N threads ahead of the stream, batches built on a background thread).

1. Throughput: pairs/s with 0 (inline, the old path), 1 and 2 decode workers, local and S3.
2. Overlap: a consumer that takes a fixed time per step (a stand-in for the GPU step). With load time L
   and step time C per batch, a serial pipeline takes L + C, a perfectly overlapped one max(L, C);
   overlap = (L + C - measured) / min(L, C).

    python bench/train_input.py                      # 512², 96 pairs, batch 8
    python bench/train_input.py --pairs 32 --size 64 # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.train_input")


def make_dataset(store, n_pairs: int, size: int, shard_size: int = 32):
    """A complete dataset in the product's layout, images replaced by portrait-like PNGs."""
    import pyarrow as pa

    from facelift.dataset import Dataset
    from facelift.testing import make_synthetic_dataset, portrait_png

    ds = make_synthetic_dataset(store, "bench-input", n_pairs=n_pairs, size=16, shard_size=shard_size,
                                splits={"val": 0.0, "test": 0.0})
    rng = np.random.default_rng(0)
    for shard in ds.committed_shards():
        table = ds.read_shard(shard)
        rows = table.to_pylist()
        for row in rows:
            for key in ("schnell_image", "dev_image"):
                row[key] = {"bytes": portrait_png(rng, size), "path": row[key]["path"]}
            row["width"] = row["height"] = size
        ds.commit_shard(shard, pa.Table.from_pylist(rows, schema=table.schema))
    return Dataset(ds.store)


def delivered(ds, size: int, batch: int, workers: int, batches: int, step_s: float = 0.0) -> dict:
    """Pairs/s and seconds per batch seen by a consumer of the product's stream (after one warm-up batch)."""
    from facelift.splits import SplitSpec
    from facelift.tasks.train_data import DataConfig, PairStream

    cfg = DataConfig(resolution=size, splits=SplitSpec(val=0.0, test=0.0), decode_workers=workers,
                     shuffle_buffer=batch, prefetch_batches=4)
    stream = PairStream(ds, ds.committed_shards(), cfg, batch, paired=True)
    it = stream.background() if workers > 0 else iter(stream)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
        if step_s:
            time.sleep(step_s)
    seconds = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    return {"pairs_per_s": batches * batch / seconds, "s_per_batch": seconds / batches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per row")
    ap.add_argument("--step-ms", type=float, default=None, help="consumer step (default: the 1-worker load time)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench-secret"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):  # the local SeaweedFS takes any signed request
        os.environ.setdefault(key, value)
    from facelift.storage import Store
    from facelift.testing import SeaweedS3

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="train-input-") as tmp:
        server = SeaweedS3(Path(tmp) / "weed").start()
        try:
            server.make_bucket("facelift")
            sources = {"local disk": Store(str(Path(tmp) / "data")),
                       "SeaweedFS S3": Store("s3://facelift/bench", server.endpoint)}
            datasets = {name: make_dataset(store, args.pairs, args.size) for name, store in sources.items()}
            png_kb = len(datasets["local disk"].read_shard(0).column("dev_image")[0]["bytes"].as_py()) / 1024
            log.info("dataset: %d pairs of %d² PNGs, ~%.0f KB each", args.pairs, args.size, png_kb)
            for name, ds in datasets.items():
                for workers in (0, 1, 2):
                    r = delivered(ds, args.size, args.batch, workers, args.batches)
                    rows.append({"source": name, "decode workers": workers or "inline (old)", **r})
                    log.info("%s, %s workers: %.1f pairs/s", name, workers, r["pairs_per_s"])
            ds = datasets["local disk"]
            load = next(r["s_per_batch"] for r in rows if r["source"] == "local disk" and r["decode workers"] == 2)
            step = args.step_ms / 1e3 if args.step_ms else load
            overlapped = delivered(ds, args.size, args.batch, 2, args.batches, step_s=step)["s_per_batch"]
        finally:
            server.stop()
    overlap = (load + step - overlapped) / min(load, step)
    lines = [f"dataset: {args.pairs} pairs, {args.size}² PNG ~{png_kb:.0f} KB, batch {args.batch}", "",
             "| source | decode workers | pairs/s | s/batch |", "|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['decode workers']} | {r['pairs_per_s']:.1f} | {r['s_per_batch']:.3f} |"
              for r in rows]
    lines += ["", "| load s/batch (L) | step s/batch (C) | serial L+C | max(L, C) | measured | overlap |",
              "|---|---|---|---|---|---|",
              f"| {load:.3f} | {step:.3f} | {load + step:.3f} | {max(load, step):.3f} | {overlapped:.3f} | "
              f"{100 * overlap:.0f}% |"]
    table = "\n".join(lines)
    print(table)  # noqa: T201 - the benchmark's output
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_input.json").write_text(json.dumps({"rows": rows, "load_s": load, "step_s": step,
                                                      "overlapped_s": overlapped, "overlap": overlap}, indent=2))


if __name__ == "__main__":
    main()
