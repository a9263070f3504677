"""Training input benchmark: pairs/s that the product's input pipeline delivers to one training worker.

Real input, not synthetic tensors: a dataset of portrait-like 512² PNG pairs (~460 KB each, smooth shapes
plus sensor-like noise) in the project's shard format, read from local disk and from a SeaweedFS S3 server,
through ``PairStream`` (decode on N threads ahead of the stream, batches built on a background thread).

1. Throughput: pairs/s with 0 (inline, the old path), 1 and 2 decode workers, local and S3; and the
   ceiling: the same stream with the decode replaced by a tensor copy (what more decode threads approach).
2. The alternatives, same files, same decoder, same batches (uint8 NCHW) to one consumer: Ray Data
   (``read_parquet`` -> ``map_batches`` decode -> ``iter_torch_batches(prefetch_batches=4)``, the Ray Train
   ingest) and a torch ``DataLoader`` with 2 worker processes.
3. Overlap: a consumer that takes a fixed time per step (a stand-in for the GPU step). With load time L
   and step time C per batch, a serial pipeline takes L + C, a perfectly overlapped one max(L, C);
   overlap = (L + C - measured) / min(L, C), at C = L/2, L and 2L. The consumer's first step is long, as
   a training loop's is (CUDA context, cuDNN autotuning, compilation), so the queue fills; the next
   ``prefetch + 1`` steps are not timed, so the timed ones see the steady state, not that head start.

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
import torch
import torch.utils.data as tud

log = logging.getLogger("bench.train_input")
PREFETCH = 4  # batches queued ahead, DataConfig's default


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


def consume(it, batch: int, batches: int, warmup: int = 1, step_s: float = 0.0, first_step_s: float = 0.0,
            settle: int = 0) -> dict:
    """Pairs/s and seconds per batch seen by a consumer: ``warmup`` batches taken as fast as they come (start-up,
    and whatever the pipeline made ahead meanwhile), a first step, ``settle`` untimed steps (the batches the
    queue filled up with during the first step, so they do not flatter the timing), then ``batches`` timed ones."""
    for _ in range(warmup):
        next(it)
    time.sleep(first_step_s)
    for _ in range(settle):
        next(it)
        time.sleep(step_s)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
        if step_s:
            time.sleep(step_s)
    seconds = time.perf_counter() - t0
    return {"pairs_per_s": batches * batch / seconds, "s_per_batch": seconds / batches}


def delivered(ds, size: int, batch: int, workers: int, batches: int, warmup: int = 1, step_s: float = 0.0,
              first_step_s: float = 0.0, settle: int = 0) -> dict:
    """The product's stream (``PairStream``, background batches when it has decode workers)."""
    from facelift.splits import SplitSpec
    from facelift.tasks.train.data import DataConfig, PairStream

    cfg = DataConfig(resolution=size, splits=SplitSpec(val=0.0, test=0.0), decode_workers=workers,
                     shuffle_buffer=batch, prefetch_batches=PREFETCH)
    stream = PairStream(ds, ds.committed_shards(), cfg, batch, paired=True)
    it = stream.background() if workers > 0 else iter(stream)
    try:
        return consume(it, batch, batches, warmup, step_s, first_step_s, settle)
    finally:
        if hasattr(it, "close"):
            it.close()
        stream.close()


def ceiling(ds, size: int, batch: int, batches: int, warmup: int) -> dict:
    """The stream with the PNG decode replaced by a copy of decoded tensors: what everything else (read,
    split, shuffle, crop/flip, stack, queue) sustains, the ceiling that more decode threads approach."""
    from facelift.tasks.train.data import PairStream

    pair = (torch.zeros(3, size, size, dtype=torch.uint8), torch.ones(3, size, size, dtype=torch.uint8))
    original = PairStream._decode
    PairStream._decode = lambda self, row: (pair[0].clone(), pair[1].clone())
    try:
        return delivered(ds, size, batch, 2, batches, warmup)
    finally:
        PairStream._decode = original


def _decode_columns(table) -> dict[str, np.ndarray]:
    from facelift.tasks.feed import decode_rgb

    return {key.split("_")[0]: np.stack([decode_rgb(cell["bytes"]).numpy() for cell in table[key].to_pylist()])
            for key in ("schnell_image", "dev_image")}


def ray_data(ds, batch: int, batches: int, warmup: int) -> dict:
    """Ray Data ingest of the same shards on the local Ray (what ``get_dataset_shard`` would iterate)."""
    import pyarrow.fs as pafs
    import ray.data

    from facelift.dataset import shard_key

    files = [ds.store.path(shard_key(s)) for s in ds.committed_shards()]
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(ds.store.fs))
    rds = ray.data.read_parquet(files, filesystem=fs).select_columns(["schnell_image", "dev_image"])
    rds = rds.map_batches(_decode_columns, batch_size=batch, batch_format="pyarrow")
    passes = -(-(warmup + batches) * batch // ds.manifest().shape[0])  # enough passes for every batch taken
    rds = rds.union(*[rds] * (passes - 1)) if passes > 1 else rds
    it = iter(rds.iter_torch_batches(batch_size=batch, prefetch_batches=4))
    result = consume(it, batch, batches, warmup)
    del it  # finished before Ray shuts down
    return result


def start_ray() -> None:
    import ray
    import ray.data

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False


class ShardPairs(tud.IterableDataset):
    """The shards as a torch IterableDataset: each DataLoader worker decodes every n-th shard, forever."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __iter__(self):
        info = tud.get_worker_info()
        shards = self.ds.committed_shards()
        mine = shards[info.id::info.num_workers] if info else shards
        while mine:
            for shard in mine:
                cols = _decode_columns(self.ds.read_shard(shard, ["schnell_image", "dev_image"]))
                yield from zip(cols["schnell"], cols["dev"], strict=True)


def data_loader(ds, batch: int, batches: int, warmup: int, workers: int = 2) -> dict:
    """torch DataLoader with ``workers`` spawned processes (fork after the s3fs and Ray threads is unsafe)."""
    loader = tud.DataLoader(ShardPairs(ds), batch_size=batch, num_workers=workers, prefetch_factor=4,
                            multiprocessing_context="spawn", persistent_workers=True)
    it = iter(loader)
    try:
        return consume(it, batch, batches, warmup)
    finally:
        it._shutdown_workers()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=12, help="untimed batches first (start-up, head start)")
    ap.add_argument("--batches", type=int, default=48, help="timed batches per throughput row")
    ap.add_argument("--overlap-batches", type=int, default=32, help="timed batches per overlap row")
    ap.add_argument("--step-factors", default="0.5,1,2", help="consumer step C as multiples of L")
    ap.add_argument("--first-step-s", type=float, default=1.0,
                    help="the consumer's first step (an eager H200 step 0 takes longer, a compiled one minutes)")
    ap.add_argument("--no-alternatives", action="store_true", help="skip the Ray Data and DataLoader rows")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench-secret"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):  # the local SeaweedFS takes any signed request
        os.environ.setdefault(key, value)
    from facelift.storage import Store
    from facelift.testing import SeaweedS3

    rows: list[dict] = []
    overlaps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="train-input-") as tmp:
        server = SeaweedS3(Path(tmp) / "weed").start()
        if not args.no_alternatives:
            start_ray()  # once: Ray cannot start again in the same process
        try:
            server.make_bucket("facelift")
            sources = {"local disk": Store(str(Path(tmp) / "data")),
                       "SeaweedFS S3": Store("s3://facelift/bench", server.endpoint)}
            datasets = {name: make_dataset(store, args.pairs, args.size) for name, store in sources.items()}
            png_kb = len(datasets["local disk"].read_shard(0).column("dev_image")[0]["bytes"].as_py()) / 1024
            log.info("dataset: %d pairs of %d² PNGs, ~%.0f KB each", args.pairs, args.size, png_kb)
            for name, ds in datasets.items():
                runs = [(f"PairStream, {w} decode threads" if w else "PairStream inline (old)",
                         lambda ds=ds, w=w: delivered(ds, args.size, args.batch, w, args.batches, args.warmup))
                        for w in (0, 1, 2)]
                runs.append(("PairStream, decode skipped (ceiling)",
                             lambda ds=ds: ceiling(ds, args.size, args.batch, args.batches, args.warmup)))
                if not args.no_alternatives:
                    runs += [(f"Ray Data, {os.cpu_count()} CPUs",
                              lambda ds=ds: ray_data(ds, args.batch, args.batches, args.warmup)),
                             ("torch DataLoader, 2 workers",
                              lambda ds=ds: data_loader(ds, args.batch, args.batches, args.warmup))]
                for pipeline, run in runs:
                    rows.append({"source": name, "pipeline": pipeline, **run()})
                    log.info("%s, %s: %.1f pairs/s", name, pipeline, rows[-1]["pairs_per_s"])
            load = next(r["s_per_batch"] for r in rows if r["source"] == "local disk" and "2 decode" in r["pipeline"])
            for factor in (float(f) for f in args.step_factors.split(",")):
                step = factor * load
                measured = delivered(datasets["local disk"], args.size, args.batch, 2, args.overlap_batches, 1,
                                     step_s=step, first_step_s=args.first_step_s, settle=PREFETCH + 1)["s_per_batch"]
                overlaps.append({"load_s": load, "step_s": step, "measured_s": measured,
                                 "overlap": (load + step - measured) / min(load, step)})
                log.info("C = %.1f L: %.3f s/batch, overlap %.0f%%", factor, measured, 100 * overlaps[-1]["overlap"])
        finally:
            server.stop()
            if not args.no_alternatives:
                import ray

                ray.shutdown()
    lines = [f"dataset: {args.pairs} pairs, {args.size}² PNG ~{png_kb:.0f} KB, batch {args.batch}, uint8 batches; "
             f"{args.batches} timed batches after {args.warmup} untimed", "",
             "| source | pipeline | pairs/s | s/batch |", "|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['pipeline']} | {r['pairs_per_s']:.1f} | {r['s_per_batch']:.3f} |" for r in rows]
    lines += ["", f"overlap (local disk, 2 decode threads; {args.overlap_batches} timed steps after a "
              f"{args.first_step_s:g} s first step and {PREFETCH + 1} untimed ones):", "",
              "| load s/batch (L) | step s/batch (C) | serial L+C | max(L, C) | measured | overlap |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {o['load_s']:.3f} | {o['step_s']:.3f} | {o['load_s'] + o['step_s']:.3f} | "
              f"{max(o['load_s'], o['step_s']):.3f} | {o['measured_s']:.3f} | {100 * o['overlap']:.0f}% |"
              for o in overlaps]
    table = "\n".join(lines)
    print(table)  # noqa: T201 - the benchmark's output
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_input.json").write_text(json.dumps({"rows": rows, "overlap": overlaps}, indent=2))


if __name__ == "__main__":
    main()
