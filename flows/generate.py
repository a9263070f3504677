"""Prefect flow ``generate_images``: prompts -> FLUX.1-schnell -> a trained head -> PNGs with provenance."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from facelift.tasks.generate import GenerateOptions, run_generate

generate_task = task(run_generate, name="generate-schnell-head", retries=0)


@flow(name="generate-images")
def generate_images(prompts: list[str], head: str, out: str, seed: int = 0, profile: str = "tiny",
                    size: int | None = None, batch_size: int | None = None, device: str = "auto",
                    endpoint_url: str | None = None, also_schnell: bool = False) -> dict[str, Any]:
    """One image per prompt (seeds ``seed``, ``seed + 1``, ...) written under ``out``; a table in the UI."""
    options = GenerateOptions(profile=profile, size=size, batch_size=batch_size, device=device,
                              endpoint_url=endpoint_url)
    result = generate_task(prompts, head, out, seed=seed, options=options, also_schnell=also_schnell)
    lines = [f"**{result['count']}** images in {result['seconds']:.1f}s: schnell "
             f"{result['schnell_s_per_image']:.3f} s/img + head {result['head_s_per_image']:.4f} s/img "
             f"(`{result['provenance']['schnell_model']}` + head run `{result['provenance']['head_run_id']}`)", "",
             "| image | prompt | seed |", "|---|---|---|"]
    images = [u for u in result["images"] if not u.endswith("-schnell.png")]
    lines += [f"| `{u}` | {p.replace('|', '/')} | {seed + i} |" for i, (u, p) in enumerate(zip(images, prompts,
                                                                                             strict=True))]
    create_markdown_artifact("\n".join(lines), key="generate-report", description=f"generate -> {out}")
    return result


if __name__ == "__main__":
    import sys

    generate_images(sys.argv[3:], sys.argv[1], sys.argv[2])
