"""Benchmark the diversity audit on CPU: DeepFace analyze+represent images/s, t-SNE seconds at 10k/100k.

    .venv/bin/python bench/audit.py --out bench-results/ [--images 16] [--tsne-sizes 10000 100000]
                                    [--tsne-cap 900] [--full-fit]

DeepFace runs unpatched on random-weight model files (made in a temp DEEPFACE_HOME unless it already holds
weights), so speed is that of the real architectures (3 VGG-Face demography nets + ArcFace ResNet-34).
t-SNE uses synthetic 512-d clustered embeddings and ``tasks.audit.tsne.tsne_embed`` (PCA 50, openTSNE FFT; above
``max_fit`` points a subsample is fitted and the rest placed); each size runs in its own process with a
time cap and is reported as "> cap" if it does not finish. CPU-only: ``--device cuda`` records a skip.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.audit")


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random BGR images (upsampled noise), like a portrait's scale of detail."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8))
                       .resize((size, size), Image.BICUBIC))[:, :, ::-1].copy() for _ in range(n)]


def bench_deepface(n_images: int, size: int) -> dict:
    from facelift.models.deepface_weights import build_random_weights, import_deepface, missing_weights
    from facelift.tasks.audit.analyze import AuditOptions, analyze_image

    out: dict = {"images": n_images, "size": size}
    if missing_weights():
        home = tempfile.mkdtemp(prefix="deepface-bench-")
        os.environ["DEEPFACE_HOME"] = home
        start = time.perf_counter()
        build_random_weights(home)
        out["random_weights_build_s"] = round(time.perf_counter() - start, 2)
    deepface = import_deepface()
    imgs = _images(n_images + 1, size)
    start = time.perf_counter()
    analyze_image(imgs[0], AuditOptions(detector="skip"))  # loads the four models
    out["first_image_s"] = round(time.perf_counter() - start, 2)
    common = {"detector_backend": "skip", "enforce_detection": False}
    start = time.perf_counter()
    for img in imgs[1:]:
        deepface.analyze(img, actions=("age", "gender", "race"), silent=True, **common)
    analyze_s = time.perf_counter() - start
    start = time.perf_counter()
    for img in imgs[1:]:
        deepface.represent(img, model_name="ArcFace", **common)
    represent_s = time.perf_counter() - start
    start = time.perf_counter()
    for img in imgs[1:]:
        analyze_image(img, AuditOptions(detector="skip"))
    both_s = time.perf_counter() - start
    start = time.perf_counter()
    no_face = [analyze_image(img, AuditOptions(detector="opencv")) for img in imgs[1:]]
    opencv_s = time.perf_counter() - start
    out.update(
        analyze_img_s=round(n_images / analyze_s, 3), represent_img_s=round(n_images / represent_s, 3),
        analyze_represent_img_s=round(n_images / both_s, 3),
        opencv_no_face_img_s=round(n_images / opencv_s, 3),
        opencv_no_face_fraction=sum(not r["face_detected"] for r in no_face) / n_images,
    )
    return out


def _tsne_worker(n: int, max_fit: int, queue: mp.Queue) -> None:
    from facelift.tasks.audit.tsne import tsne_embed

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((12, 512)).astype(np.float32) * 3
    x = centers[rng.integers(0, 12, n)] + rng.standard_normal((n, 512)).astype(np.float32)
    start = time.perf_counter()
    res = tsne_embed(x, max_fit=max_fit, seed=0)
    queue.put({"seconds": round(time.perf_counter() - start, 2), "fitted": res.fitted, "placed": res.placed,
               "gradient": res.gradient})


def bench_tsne(n: int, max_fit: int, cap_s: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_tsne_worker, args=(n, max_fit, queue))
    start = time.perf_counter()
    proc.start()
    proc.join(cap_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        return {"points": n, "max_fit": max_fit, "seconds": None, "timed_out_after_s": cap_s}
    if proc.exitcode != 0 or queue.empty():
        return {"points": n, "max_fit": max_fit, "seconds": None, "error": f"exit code {proc.exitcode}"}
    return {"points": n, "max_fit": max_fit, "wall_s": round(time.perf_counter() - start, 2), **queue.get()}


def markdown(result: dict) -> str:
    lines = ["| measurement | value |", "|---|---|"]
    df = result.get("deepface", {})
    for key in ("images", "size", "random_weights_build_s", "first_image_s", "analyze_img_s",
                "represent_img_s", "analyze_represent_img_s", "opencv_no_face_img_s"):
        if key in df:
            lines.append(f"| deepface {key} | {df[key]} |")
    for t in result.get("tsne", []):
        value = f"{t['seconds']} s" if t.get("seconds") is not None else \
            (f"> {t['timed_out_after_s']} s (cap)" if "timed_out_after_s" in t else t.get("error"))
        detail = f" (fit {t['fitted']}, placed {t['placed']}, {t['gradient']})" if "fitted" in t else ""
        lines.append(f"| t-SNE {t['points']} points, max_fit {t['max_fit']} | {value}{detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--device", default="cpu", help="cpu (cuda is recorded as skipped: CPU-only bench)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tsne-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--max-fit", type=int, default=20_000)
    parser.add_argument("--tsne-cap", type=float, default=900.0, help="seconds per t-SNE size")
    parser.add_argument("--full-fit", action="store_true", help="also fit t-SNE on all points of each size")
    parser.add_argument("--skip-deepface", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"bench": "audit", "device": args.device, "cpus": os.cpu_count()}
    if args.device != "cpu":
        result["skipped"] = "CPU-only benchmark (DeepFace/TensorFlow are not on the GPU image)"
    else:
        if not args.skip_deepface:
            result["deepface"] = bench_deepface(args.images, args.size)
        result["tsne"] = []
        for n in args.tsne_sizes:
            result["tsne"].append(bench_tsne(n, args.max_fit, args.tsne_cap))
            if args.full_fit and n > args.max_fit:
                result["tsne"].append(bench_tsne(n, n, args.tsne_cap))
    (out_dir / "audit.json").write_text(json.dumps(result, indent=2))
    print(markdown(result) if "skipped" not in result else f"audit bench skipped: {result['skipped']}")
    return result


if __name__ == "__main__":
    main()
