"""facelift generate: schnell T2I then the head (tiny models, CPU), provenance in the PNGs, CLI, API and flow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facelift.models.heads import build_head
from facelift.tasks.generate import GenerateOptions, Generator, head_run_id, read_provenance


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as training writes it: <root>/runs/<id>/head."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("root") / "runs" / "run-gen1"
    head = build_head("esa_cyclegan", "debug")
    with torch.no_grad():  # a fresh head starts near the identity: perturb it so that its effect is visible
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    head.save(str(run / "head"))
    return run


@pytest.fixture(scope="module")
def generator(run_dir: Path, cache_dir: Path) -> Generator:
    return Generator(str(run_dir), GenerateOptions(size=32, batch_size=2, device="cpu", cache_dir=str(cache_dir)))


def test_generator_batches_are_independent_and_seeded(generator: Generator) -> None:
    prompts = ["A professional portrait of Ada Lovelace", "A professional portrait of Alan Turing",
               "A professional portrait of Grace Hopper"]
    results = generator(prompts, [7, 8, 9])
    assert [(g.prompt, g.seed) for g in results] == list(zip(prompts, [7, 8, 9], strict=True))
    assert all(g.enhanced.shape == g.schnell.shape == (3, 32, 32) and g.enhanced.dtype == torch.uint8
               for g in results)
    alone = generator([prompts[1]], [8])[0]  # first in its own batch instead of second of the first batch
    assert (alone.schnell.int() - results[1].schnell.int()).abs().max() <= 1
    other_seed = generator([prompts[1]], [99])[0]
    assert (other_seed.schnell.int() - alone.schnell.int()).abs().float().mean() > 5
    head_alone = generator.engine.run_uint8(results[0].schnell[None])[0]  # batch of 1 vs 2: rounding may differ
    assert (head_alone.int() - results[0].enhanced.int()).abs().max() <= 1
    assert not torch.equal(results[0].enhanced, results[0].schnell)  # the head did something
    prov = results[2].provenance
    assert prov["prompt"] == prompts[2] and prov["seed"] == 9 and prov["head_run_id"] == "run-gen1"
    assert prov["schnell_model"] == "tiny://schnell" and len(prov["schnell_transformer_sha256"]) == 64
    with pytest.raises(ValueError, match="empty prompt"):
        generator([" "], [0])


def test_head_run_id() -> None:
    assert head_run_id("s3://b/root/runs/abc123") == "abc123"
    assert head_run_id("/x/runs/abc123/head/") == "abc123"


def test_cli_generate_pngs_carry_provenance(run_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    from facelift.cli.main import app

    runner = CliRunner()
    out = tmp_path / "gen"
    res = runner.invoke(app, ["generate", "A professional portrait of Ada Lovelace", "A professional business portrait",
                              "--head", str(run_dir), "--seed", "5", "--out", str(out), "--size", "32",
                              "--device", "cpu", "--also-schnell"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["0000-s5-schnell.png", "0000-s5.png", "0001-s6-schnell.png",
                                                     "0001-s6.png"]
    prov = read_provenance((out / "0001-s6.png").read_bytes())
    assert prov["prompt"] == "A professional business portrait" and prov["seed"] == 6
    assert prov["head_run_id"] == "run-gen1" and prov["image"] == "schnell+head"
    assert prov["schnell_model"] == "tiny://schnell" and "schnell_revision" in prov and prov["steps"] == 2
    with Image.open(out / "0001-s6.png") as img:
        assert img.size == (32, 32) and img.text["prompt"] == "A professional business portrait"
        assert img.text["seed"] == "6"
    assert read_provenance((out / "0000-s5-schnell.png").read_bytes())["image"] == "schnell"

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# portraits\nA professional portrait of Ada Lovelace\n\n")
    res = runner.invoke(app, ["generate", "--prompts", str(prompts), "--head", str(run_dir), "--seed", "5", "--out",
                              str(tmp_path / "gen2"), "--size", "32", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert result["count"] == 1 and result["provenance"]["head_run_id"] == "run-gen1"
    # the same prompt and seed give the same image, whatever else was in the batch
    a = np.asarray(Image.open(out / "0000-s5.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "gen2" / "0000-s5.png")).astype(int)
    assert np.abs(a - b).max() <= 1

    bad = runner.invoke(app, ["generate", "x", "--head", str(tmp_path / "nohead"), "--out", str(tmp_path / "g3")])
    assert bad.exit_code == 2 and "no head at" in bad.output and "Traceback" not in bad.output
    both = runner.invoke(app, ["generate", "x", "--prompts", str(prompts), "--head", str(run_dir)])
    assert both.exit_code == 2 and "one of the two" in both.output
    odd = runner.invoke(app, ["generate", "x", "--head", str(run_dir), "--size", "40", "--out", str(tmp_path / "g4")])
    assert odd.exit_code == 2 and "multiple of 16" in odd.output


def test_python_api_generate(run_dir: Path, cache_dir: Path) -> None:
    from facelift.api import generate

    img = generate("A professional portrait of Ada Lovelace", head=str(run_dir), seed=3, size=32, device="cpu")
    assert isinstance(img, Image.Image) and img.size == (32, 32)
    assert img.info["prompt"] == "A professional portrait of Ada Lovelace" and img.info["seed"] == "3"
    pairs = generate(["a", "b"], head=str(run_dir), seed=3, size=32, device="cpu", with_schnell=True)
    assert len(pairs) == 2 and all(len(p) == 2 for p in pairs)
    assert pairs[0][1].info["head_run_id"] == "run-gen1"


def test_generate_flow(prefect_harness, run_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    from facelift.flows.generate import generate_images

    result = generate_images(["A professional portrait of Ada Lovelace"], str(run_dir), str(tmp_path / "flow"),
                             seed=1, size=32, device="cpu")
    assert result["count"] == 1 and (tmp_path / "flow" / "0000-s1.png").is_file()
    assert read_provenance((tmp_path / "flow" / "0000-s1.png").read_bytes())["seed"] == 1


def test_demo_step(run_dir: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    from facelift.cli.generate import demo_step

    out = demo_step({"root": str(tmp_path), "head_runs": {"esa_cyclegan": str(run_dir)}})
    files = sorted(p.name for p in (tmp_path / "generate-demo").iterdir())
    assert files == ["0000-s7-schnell.png", "0000-s7.png", "0001-s8-schnell.png", "0001-s8.png"]
    assert out["summary"][0][0] == "generate" and "head run run-gen1" in capsys.readouterr().out
    assert demo_step({"root": str(tmp_path)}) == {}
