"""Prefect flow ``enhance_images``: apply a trained head to a folder, glob or object-store prefix of images."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from facelift.tasks.enhance import DEFAULT_HOLD_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_TILE_PIXELS, run_enhance

enhance_task = task(run_enhance, name="enhance-files", retries=0)


@flow(name="enhance-images")
def enhance_images(src: str, dst: str, head: str, endpoint_url: str | None = None, device: str = "auto",
                   batch_size: int = 16, policy: str = "pad", size: int | None = None,
                   compile: bool | None = None, out_format: str | None = None, workers: int = 4,
                   max_pixels: int = DEFAULT_MAX_PIXELS, tile_pixels: int = DEFAULT_TILE_PIXELS,
                   hold_pixels: int = DEFAULT_HOLD_PIXELS, overwrite: bool = False) -> dict[str, Any]:
    """Enhance every PNG/JPEG/WebP under ``src`` into ``dst`` with the head at ``head``; report skipped files."""
    report = enhance_task(src, dst, head, endpoint_url=endpoint_url, device=device, batch_size=batch_size,
                          policy=policy, size=size, compile=compile, out_format=out_format, workers=workers,
                          progress=False, max_pixels=max_pixels, tile_pixels=tile_pixels, hold_pixels=hold_pixels,
                          overwrite=overwrite)
    lines = [f"**{report.processed}** images enhanced into `{dst}` in {report.seconds:.1f}s "
             f"({report.images_per_s:.1f} img/s), **{len(report.failed)}** failed, **{len(report.skipped)}** "
             f"skipped, {report.existing} already done.", "", *(f"- {note}" for note in report.notes), ""]
    if report.failed or report.skipped:
        lines += ["| file | outcome | reason |", "|---|---|---|"]
        lines += [f"| `{p}` | failed | {e.replace('|', '/')} |" for p, e in report.failed]
        lines += [f"| `{p}` | skipped | {e.replace('|', '/')} |" for p, e in report.skipped]
    create_markdown_artifact("\n".join(lines), key="enhance-report", description=f"enhance {src} -> {dst}")
    return report.as_dict()


if __name__ == "__main__":
    import sys

    enhance_images(*sys.argv[1:4])
