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
    """One image per prompt (seeds ``seed``, ``seed + 1``, ...) streamed into ``out`` (a rerun resumes from its
    ``manifest.jsonl``); a table of the first 200 images and of the failures in the UI."""
    options = GenerateOptions(profile=profile, size=size, batch_size=batch_size, device=device,
                              endpoint_url=endpoint_url)
    result = generate_task(prompts, head, out, seed=seed, options=options, also_schnell=also_schnell)
    prov = result["provenance"]
    lines = [f"**{result['count']}** images in {result['seconds']:.1f}s ({result['existing']} already done, "
             f"{len(result['failed'])} failed; `{result['manifest']}`): schnell "
             f"{result['schnell_s_per_image']:.3f} s/img + head {result['head_s_per_image']:.4f} s/img "
             f"(`{prov.get('schnell_model', '')}` + head run `{prov.get('head_run_id', head)}`)", "",
             "| image | prompt | seed |", "|---|---|---|"]
    lines += [f"| `{w['uri']}` | {w['prompt'].replace('|', '/')} | {w['seed']} |" for w in result["written"][:200]]
    lines += [f"| failed: {f['error'].replace('|', '/')} | {f['prompt'].replace('|', '/')} | {f['seed']} |"
              for f in result["failed"][:200]]
    create_markdown_artifact("\n".join(lines), key="generate-report", description=f"generate -> {out}")
    return {k: v for k, v in result.items() if k != "written"}


if __name__ == "__main__":
    import sys

    generate_images(sys.argv[3:], sys.argv[1], sys.argv[2])
