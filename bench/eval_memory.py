"""Peak memory of the evaluation path at N and 4·N images per set: each N in a fresh process, on CPU.

    .venv/bin/python bench/eval_memory.py --out bench-results/ [--n 64 256] [--size 64] [--batch-size 16] [--control]

A synthetic dataset (``facelift.testing.make_synthetic_dataset``, test split 0.9) and an ESA-CycleGAN debug head
(its run.json records the dataset's splits) are written once to a temp folder. Then each N runs the evaluation
path (``select_test_split``, ``MetricSuite``, ``score_rows``: schnell, dev and the head, no feature cache) in its
own subprocess with the random-weight FID Inception and the tiny CLIP (``models/tiny_metrics.py``; LPIPS with a
random backbone). A child's peak RSS is its ``ru_maxrss`` from ``os.wait4`` (for one child, what
``getrusage(RUSAGE_CHILDREN)`` reports). The table beside it: the features the evaluation keeps (N × 2048 float32
per set: the rows and the two reference sets) and the decoded images an in-memory path would hold (the four
dataset sets plus the head's outputs), which the old ``load_heldout`` did. ``--control`` also runs each N with
the four dataset sets' decoded images kept in memory first (what an in-memory path holds), to show that the
measurement sees image memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench.eval_memory")
FEATURE_DIM = 2048


def prepare(folder: Path, max_n: int, size: int) -> tuple[str, str]:
    """The dataset (a test half of >= max_n pairs) and a head run trained (as its run.json says) on its splits."""
    from facelift.models.heads import build_head
    from facelift.splits import SplitSpec
    from facelift.storage import Store
    from facelift.testing import make_synthetic_dataset

    splits = {"val": 0.05, "test": 0.9}
    n_pairs = 2 * max_n + 8
    while SplitSpec(**splits).counts(f"bench-{i:06d}" for i in range(n_pairs))["test"] < 2 * max_n:
        n_pairs += 8
    start = time.perf_counter()
    root = Store(str(folder))
    ds = make_synthetic_dataset(root, "bench", n_pairs=n_pairs, size=size, shard_size=64, seed=0, splits=splits)
    run = root.child("runs/bench-esa")
    build_head("esa_cyclegan", "debug").save(run.child("head").url())
    run.write_bytes("run.json", json.dumps({"status": "completed", "splits": ds.info()["splits"],
                                            "config": {"dataset_uri": ds.uri, "head": "esa_cyclegan"}}).encode())
    log.info("dataset %s: %d pairs at %d² in %.1fs", ds.uri, n_pairs, size, time.perf_counter() - start)
    return ds.uri, run.url()


def child(dataset_uri: str, head: str, n: int, batch_size: int, hold: bool) -> dict:
    """The evaluation path at ``n`` per set (runs in the measured subprocess); ``hold``: the control, which first
    decodes the test pairs' images of both halves and keeps them for the whole run."""
    from facelift.dataset import Dataset
    from facelift.models.metrics import MetricConfig
    from facelift.models.tiny_metrics import ensure_random_fid_weights, ensure_tiny_clip
    from facelift.tasks.evaluate import data as eval_data
    from facelift.tasks.evaluate import score as ev

    start = time.perf_counter()
    ds = Dataset.open(dataset_uri)
    eval_data.check_head_splits([head], ds)
    split = eval_data.select_test_split(ds, n)
    held = [b.images for b in eval_data.iter_batches(ds, split.input + split.reference, split.size, batch_size)] \
        if hold else []
    cfg = ev.EvalConfig(n_images=n, n_boot=4, device="cpu", batch_size=batch_size, kid_subsets=10)
    suite = ev.MetricSuite(MetricConfig(str(ensure_random_fid_weights()), str(ensure_tiny_clip()),
                                        lpips_random_backbone=True), "cpu", batch_size, cfg.resize)
    sources = ev.reference_sources() + [ev.HeadSource(head, cfg)]
    table, _ = ev.score_rows(sources, ds, split, suite, None, cfg)
    return {"n": int(table["n"].iloc[0]), "rows": len(table), "size": split.size, "resize": cfg.resize,
            "path": "control: images held" if hold else "streaming", "held_images": sum(
                len(t) for images in held for t in images.values()), "seconds": round(time.perf_counter() - start, 1)}


def measure(dataset_uri: str, head: str, n: int, batch_size: int, hold: bool = False) -> dict:
    """Run ``child`` in a fresh interpreter; its result plus its own peak RSS (os.wait4's ru_maxrss, KiB)."""
    with tempfile.TemporaryDirectory(prefix="eval-memory-child-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", dataset_uri, head, str(n), str(batch_size), str(result_file),
               "hold" if hold else "stream"]
        proc = subprocess.Popen(cmd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"evaluation at n={n} failed (exit {proc.returncode})")
        result = json.loads(result_file.read_text())
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def markdown(results: list[dict]) -> str:
    lines = ["| image size | path | N per set | rows | peak RSS (MB) | × peak at smallest N | features kept (MB) "
             "| images an in-memory path holds (MB) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = min((x for x in results if x["path"] == r["path"]), key=lambda x: x["n"])["peak_rss_mb"]
        sets = r["rows"] + 2  # the rows' features and the two reference sets
        feats = sets * r["n"] * FEATURE_DIM * 4 / 2**20
        images = (4 + r["rows"] - 2) * r["n"] * 3 * r["size"] ** 2 / 2**20
        lines.append(f"| {r['size']}² | {r['path']} | {r['n']} | {r['rows']} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] / base:.3f} | {feats:.1f} | {images:.1f} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--n", type=int, nargs="+", default=[64, 256], help="images per set, one process each")
    parser.add_argument("--size", type=int, default=64, help="square image size of the synthetic dataset")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--control", action="store_true", help="also run each N with the images held in memory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eval-memory-") as tmp:
        dataset_uri, head = prepare(Path(tmp), max(args.n), args.size)
        results = []
        for hold in (False, True) if args.control else (False,):
            for n in sorted(args.n):
                results.append(measure(dataset_uri, head, n, args.batch_size, hold))
                log.info("n=%d (%s): peak RSS %.0f MB in %.0fs", n, results[-1]["path"], results[-1]["peak_rss_mb"],
                         results[-1]["seconds"])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    log.info("RUSAGE_CHILDREN ru_maxrss (the largest child): %.0f MB", children)
    (out_dir / f"eval_memory_{args.size}.json").write_text(json.dumps(
        {"bench": "eval_memory", "cpus": os.cpu_count(), "batch_size": args.batch_size, "results": results},
        indent=2))
    print(markdown(results))
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        uri, head_uri, n_arg, bs_arg, result_path, mode = sys.argv[2:8]
        Path(result_path).write_text(json.dumps(child(uri, head_uri, int(n_arg), int(bs_arg), mode == "hold")))
    else:
        main()
