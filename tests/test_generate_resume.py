"""facelift generate --prompts at scale: streamed to disk, per-prompt failures in manifest.jsonl, resumable reruns,
slug + seed names that never overwrite another run's file (tiny models, CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from facelift.models.heads import build_head
from facelift.tasks.generate import GenerateOptions, Generator, read_provenance, run_generate

PROMPTS = [f"A professional portrait of person {i}" for i in range(10)]


@pytest.fixture(scope="module")
def head_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two heads of the same architecture with different weights (runs <root>/runs/<id>/head)."""
    root = tmp_path_factory.mktemp("root") / "runs"
    runs = []
    for i in range(2):
        torch.manual_seed(i)
        head = build_head("esa_cyclegan", "debug")
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        head.save(str(root / f"run-{i}" / "head"))
        runs.append(root / f"run-{i}")
    return runs[0], runs[1]


@pytest.fixture(scope="module")
def real(head_dirs: tuple[Path, Path], cache_dir: Path) -> Generator:
    return Generator(str(head_dirs[0]), GenerateOptions(size=32, batch_size=1, device="cpu",
                                                        cache_dir=str(cache_dir)))


class Counting:
    """The real generator, counting the prompts it renders; ``crash_on`` raises ``crash`` for that prompt."""

    def __init__(self, real: Generator, batch_size: int = 1, crash_on: str | None = None,
                 crash: BaseException | None = None) -> None:
        self.real, self.batch_size, self.crash_on, self.crash = real, batch_size, crash_on, crash
        self.base_provenance = real.base_provenance
        self.rendered: list[str] = []

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        if self.crash_on in prompts and self.crash is not None:
            raise self.crash
        self.rendered += prompts
        return self.real(prompts, seeds)


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.suffix == ".png")


def test_crash_at_prompt_3_keeps_0_to_2_and_rerun_renders_only_3_to_9(real: Generator, head_dirs, tmp_path: Path):
    out = tmp_path / "out"
    first = Counting(real, crash_on=PROMPTS[3], crash=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_generate(PROMPTS, str(head_dirs[0]), str(out), seed=100, generator=first, progress=False)
    assert first.rendered == PROMPTS[:3]
    assert names(out) == sorted(f"a-professional-portrait-of-person-{i}-s{100 + i}.png" for i in range(3))
    assert [(r["prompt"], r["seed"], r["status"]) for r in manifest(out)] == [(PROMPTS[i], 100 + i, "ok")
                                                                              for i in range(3)]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = Counting(real)
    result = run_generate(PROMPTS, str(head_dirs[0]), str(out), seed=100, generator=again, progress=False)
    assert again.rendered == PROMPTS[3:]  # only 3-9 are rendered
    assert result["count"] == 7 and result["existing"] == 3 and not result["failed"]
    assert len(names(out)) == 10
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in stamps.items() if n.endswith(".png"))
    prov = read_provenance((out / "a-professional-portrait-of-person-5-s105.png").read_bytes())
    assert prov["prompt"] == PROMPTS[5] and prov["seed"] == 105 and len(prov["head_sha256"]) == 64
    records = manifest(out)
    assert {r["head_sha256"] for r in records} == {prov["head_sha256"]}

    third = Counting(real)
    done = run_generate(PROMPTS, str(head_dirs[0]), str(out), seed=100, generator=third, progress=False)
    assert third.rendered == [] and done["count"] == 0 and done["existing"] == 10

    # a run killed (SIGKILL) after writing images 8 and 9 but before their manifest lines: found, not redone
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(line for line in lines if '"seed": 108' not in line
                                                  and '"seed": 109' not in line) + "\n")
    fourth = Counting(real)
    done = run_generate(PROMPTS, str(head_dirs[0]), str(out), seed=100, generator=fourth, progress=False)
    assert fourth.rendered == [] and done["existing"] == 10 and len(names(out)) == 10
    assert {r["seed"] for r in manifest(out)} == set(range(100, 110))


def test_per_prompt_failure_recorded_and_retried_alone(real: Generator, head_dirs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    flaky = Counting(real, batch_size=2, crash_on=PROMPTS[3], crash=ValueError("bad prompt"))
    result = run_generate(PROMPTS, str(head_dirs[0]), str(out), seed=0, generator=flaky, progress=False)
    assert result["count"] == 9 and [f["prompt"] for f in result["failed"]] == [PROMPTS[3]]
    assert "bad prompt" in result["failed"][0]["error"]
    assert len(names(out)) == 9 and not (out / "a-professional-portrait-of-person-3-s3.png").exists()
    failed = [r for r in manifest(out) if r["status"] == "failed"]
    assert [(r["prompt"], r["seed"]) for r in failed] == [(PROMPTS[3], 3)] and "bad prompt" in failed[0]["error"]

    again = Counting(real, batch_size=2)
    result = run_generate(PROMPTS, str(head_dirs[0]), str(out), seed=0, generator=again, progress=False)
    assert again.rendered == [PROMPTS[3]] and result["count"] == 1 and result["existing"] == 9


def test_names_never_overwrite_another_runs_file(real: Generator, head_dirs, tmp_path: Path, cache_dir) -> None:
    out = tmp_path / "out"
    run_generate(["A cat!"], str(head_dirs[0]), str(out), seed=1, generator=Counting(real), progress=False)
    before = (out / "a-cat-s1.png").read_bytes()
    # another prompt with the same slug and seed, then the same prompt and seed with another head
    run_generate(["a  CAT"], str(head_dirs[0]), str(out), seed=1, generator=Counting(real), progress=False)
    other = Generator(str(head_dirs[1]), GenerateOptions(size=32, batch_size=1, device="cpu",
                                                         cache_dir=str(cache_dir)))
    counting = Counting(other)
    run_generate(["A cat!"], str(head_dirs[1]), str(out), seed=1, generator=counting, progress=False)
    assert counting.rendered == ["A cat!"]  # another head's key: rendered, not skipped
    assert (out / "a-cat-s1.png").read_bytes() == before
    assert names(out) == ["a-cat-s1-2.png", "a-cat-s1-3.png", "a-cat-s1.png"]
    heads = {r["file"]: r["head_sha256"] for r in manifest(out)}
    assert heads["a-cat-s1.png"] == heads["a-cat-s1-2.png"] != heads["a-cat-s1-3.png"]


class AlwaysFails:
    batch_size = 2
    base_provenance: dict[str, Any] = {}

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        self.calls += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_failures_in_a_row_stop_the_run(head_dirs, tmp_path: Path) -> None:
    broken = AlwaysFails()
    with pytest.raises(RuntimeError, match="4 prompts in a row failed.*illegal memory access"):
        run_generate(PROMPTS, str(head_dirs[0]), str(tmp_path / "out"), generator=broken, progress=False,
                     max_consecutive_failures=4)
    assert broken.calls == 6  # two batches of 2, each retried one prompt at a time
    assert len(manifest(tmp_path / "out")) == 4
