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
from facelift.tasks.enhance.metadata import TRAINED
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
    assert prov["schnell_commit"] == "" and len(prov["head_sha256"]) == 64
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
    assert sorted(p.name for p in out.iterdir()) == [
        "a-professional-business-portrait-s6-schnell.png", "a-professional-business-portrait-s6.png",
        "a-professional-portrait-of-ada-lovelace-s5-schnell.png", "a-professional-portrait-of-ada-lovelace-s5.png",
        "manifest.jsonl"]
    ada = out / "a-professional-portrait-of-ada-lovelace-s5.png"
    business = out / "a-professional-business-portrait-s6.png"
    prov = read_provenance(business.read_bytes())
    assert prov["prompt"] == "A professional business portrait" and prov["seed"] == 6
    assert prov["head_run_id"] == "run-gen1" and prov["image"] == "schnell+head"
    assert prov["schnell_model"] == "tiny://schnell" and "schnell_revision" in prov and prov["steps"] == 2
    with Image.open(business) as img:
        assert img.size == (32, 32) and "prompt" not in img.text  # ComfyUI's chunk name is left alone
        assert img.text["parameters"].startswith("A professional business portrait\nSteps: 2, ")
    assert read_provenance((out / "a-professional-business-portrait-s6-schnell.png").read_bytes())["image"] == "schnell"

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# portraits\nA professional portrait of Ada Lovelace\n\n")
    res = runner.invoke(app, ["generate", "--prompts", str(prompts), "--head", str(run_dir), "--seed", "5", "--out",
                              str(tmp_path / "gen2"), "--size", "32", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert result["count"] == 1 and result["provenance"]["head_run_id"] == "run-gen1"
    # the same prompt and seed give the same image, whatever else was in the batch
    a = np.asarray(Image.open(ada)).astype(int)
    b = np.asarray(Image.open(tmp_path / "gen2" / ada.name)).astype(int)
    assert np.abs(a - b).max() <= 1

    bad = runner.invoke(app, ["generate", "x", "--head", str(tmp_path / "nohead"), "--out", str(tmp_path / "g3")])
    assert bad.exit_code == 2 and "no head at" in bad.output and "Traceback" not in bad.output
    both = runner.invoke(app, ["generate", "x", "--prompts", str(prompts), "--head", str(run_dir)])
    assert both.exit_code == 2 and "one of the two" in both.output
    odd = runner.invoke(app, ["generate", "x", "--head", str(run_dir), "--size", "40", "--out", str(tmp_path / "g4")])
    assert odd.exit_code == 2 and "multiple of 16" in odd.output


def test_cli_tiny_notice_and_required_head(run_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    import re

    from facelift.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["generate", "a portrait", "--head", str(run_dir), "--out", str(tmp_path / "t"),
                              "--size", "32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    notices = [line for line in res.output.splitlines() if "tiny test profile" in line]
    assert len(notices) == 1 and "--profile flux" in notices[0]
    for command in ("generate", "enhance"):
        text = re.sub(r"\x1b\[[0-9;]*m", "", runner.invoke(app, [command, "--help"]).output)
        head_block = re.split(r"\n\S* [ *]  --", text[text.index("--head"):])[0]  # up to the next option
        assert "[required]" in head_block, text
    missing = runner.invoke(app, ["generate", "a portrait", "--out", str(tmp_path / "t2")])
    assert missing.exit_code == 2 and "--head" in missing.output and "Traceback" not in missing.output


def test_python_api_generate(run_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    from facelift.api import generate

    img = generate("A professional portrait of Ada Lovelace", head=str(run_dir), seed=3, size=32, device="cpu")
    assert isinstance(img, Image.Image) and img.size == (32, 32)
    assert img.info["prompt"] == "A professional portrait of Ada Lovelace" and img.info["seed"] == "3"
    img.save(tmp_path / "saved.png")  # a plain save keeps the provenance
    prov = read_provenance((tmp_path / "saved.png").read_bytes())
    assert prov["prompt"] == "A professional portrait of Ada Lovelace" and prov["seed"] == 3
    assert prov["head_run_id"] == "run-gen1" and len(prov["head_sha256"]) == 64
    with Image.open(tmp_path / "saved.png") as back:
        assert back.text["parameters"].splitlines()[0] == "A professional portrait of Ada Lovelace"
        assert TRAINED in back.text["XML:com.adobe.xmp"]
        assert "prompt" not in back.text
    img.save(tmp_path / "saved.jpg")  # JPEG: the XMP packet carries it
    assert read_provenance((tmp_path / "saved.jpg").read_bytes())["seed"] == 3
    pairs = generate(["a", "b"], head=str(run_dir), seed=3, size=32, device="cpu", with_schnell=True)
    assert len(pairs) == 2 and all(len(p) == 2 for p in pairs)
    assert pairs[0][1].info["head_run_id"] == "run-gen1"


def test_generate_flow(prefect_harness, run_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    from facelift.flows.generate import generate_images

    result = generate_images(["A professional portrait of Ada Lovelace"], str(run_dir), str(tmp_path / "flow"),
                             seed=1, size=32, device="cpu")
    png = tmp_path / "flow" / "a-professional-portrait-of-ada-lovelace-s1.png"
    assert result["count"] == 1 and png.is_file()
    assert read_provenance(png.read_bytes())["seed"] == 1


def test_demo_step(run_dir: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    from facelift.cli.generate import demo_step

    out = demo_step({"root": str(tmp_path), "head_runs": {"esa_cyclegan": str(run_dir)}})
    files = sorted(p.name for p in (tmp_path / "generate-demo").iterdir())
    assert files == ["a-professional-business-portrait-s8-schnell.png", "a-professional-business-portrait-s8.png",
                     "a-professional-portrait-of-ada-lovelace-s7-schnell.png",
                     "a-professional-portrait-of-ada-lovelace-s7.png", "manifest.jsonl"]
    assert out["summary"][0][0] == "generate" and "head run run-gen1" in capsys.readouterr().out
    assert demo_step({"root": str(tmp_path)}) == {}
