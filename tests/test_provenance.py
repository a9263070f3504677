"""Provenance other tools read: A1111 ``parameters``, XMP with IPTC DigitalSourceType, the snapshot commit, weight
hashes of bytes; kept through enhance (the input's provenance plus the enhance head)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facelift.models.heads import build_head
from facelift.tasks.enhance import run_enhance
from facelift.tasks.enhance.metadata import COMPOSITE, TRAINED, head_sha256, xmp_fields
from facelift.tasks.generate import png_bytes, read_provenance
from facelift.tasks.generate.provenance import a1111_parameters, snapshot_commit, transformer_sha256

PROV = {"prompt": "A professional portrait of Ada Lovelace", "seed": 7,
        "schnell_model": "black-forest-labs/FLUX.1-schnell",
        "schnell_revision": "a" * 40, "schnell_transformer_sha256": "f" * 64, "steps": 4, "guidance": 0.0,
        "size": 512, "head": "esa_cyclegan", "head_sha256": "e" * 64, "head_run_id": "run-1",
        "facelift_version": "0.1.0", "image": "schnell+head"}


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("prov") / "runs" / "run-e" / "head"
    build_head("esa_cyclegan", "debug").save(str(folder))
    return str(folder.parent)


def test_png_chunks_other_tools_read() -> None:
    data = png_bytes(torch.zeros(3, 16, 16, dtype=torch.uint8), PROV)
    with Image.open(io.BytesIO(data)) as img:
        text = dict(img.text)
    assert "prompt" not in text  # ComfyUI's chunk name
    prompt, settings = text["parameters"].split("\n")
    assert prompt == PROV["prompt"]
    assert settings.startswith("Steps: 4, Sampler: Euler, CFG scale: 0.0, Seed: 7, Size: 512x512, "
                               "Model hash: ffffffffff")
    assert "Head hash: eeeeeeeeee" in settings
    fields = xmp_fields(text["XML:com.adobe.xmp"])
    assert fields["DigitalSourceType"] == TRAINED == \
        "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    assert read_provenance(data) == PROV
    assert a1111_parameters({**PROV, "prompt": "a, b: c"}).startswith("a, b: c\n")


def test_snapshot_commit_and_transformer_hash_of_bytes(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-schnell" / "snapshots" / commit
    blobs = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-schnell" / "blobs"
    (snap / "transformer").mkdir(parents=True)
    blobs.mkdir()
    (blobs / "deadbeef").write_bytes(b"weights v1")  # the blob's name is not its content hash here
    (snap / "transformer" / "model.safetensors").symlink_to(blobs / "deadbeef")
    (snap / "transformer" / "config.json").write_text("{}")
    assert snapshot_commit(snap) == commit and snapshot_commit(tmp_path) == ""
    first = transformer_sha256(snap, cache_dir=str(tmp_path / "cache"))
    assert (tmp_path / "cache" / "file-sha256.json").is_file()
    (blobs / "deadbeef").write_bytes(b"weights v2")  # same blob name, other bytes: another hash
    assert transformer_sha256(snap, cache_dir=str(tmp_path / "cache")) != first
    assert transformer_sha256(tmp_path) == "missing"


def test_head_sha256_is_the_weights_file(head: str) -> None:
    weights = Path(head) / "head" / "model.safetensors"
    assert head_sha256(head) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_no_credentials_in_provenance_uris() -> None:
    from facelift.tasks.enhance.metadata import public_uri

    assert public_uri("s3://AKIAXXX:secret@bucket/runs/r1") == "s3://bucket/runs/r1"
    assert public_uri("https://host/runs/r1?X-Amz-Signature=abc") == "https://host/runs/r1"
    assert public_uri("/data/runs/r1") == "/data/runs/r1"


def test_enhance_keeps_the_input_provenance_and_adds_its_head(head: str, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8))
    (tmp_path / "in" / "gen.png").write_bytes(png_bytes(image, PROV))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in" / "photo.png")
    report = run_enhance(str(tmp_path / "in"), str(tmp_path / "out"), head, device="cpu", progress=False)
    assert report.processed == 2
    data = (tmp_path / "out" / "gen.png").read_bytes()
    prov = read_provenance(data)
    enhance = prov.pop("enhance")
    assert prov == PROV  # the input's provenance, unchanged
    assert enhance["head_sha256"] == head_sha256(head) and enhance["head"] == "esa_cyclegan"
    assert enhance["head_run_id"] == "run-e"
    with Image.open(io.BytesIO(data)) as img:
        assert img.text["parameters"].startswith(a1111_parameters(PROV))
        assert f"Enhance head hash: {enhance['head_sha256'][:10]}" in img.text["parameters"]
        assert xmp_fields(img.text["XML:com.adobe.xmp"])["DigitalSourceType"] == TRAINED
    photo = (tmp_path / "out" / "photo.png").read_bytes()
    assert set(read_provenance(photo)) == {"enhance"}
    with Image.open(io.BytesIO(photo)) as img:
        assert xmp_fields(img.text["XML:com.adobe.xmp"])["DigitalSourceType"] == COMPOSITE
        assert "parameters" not in img.text

    jpg = run_enhance(str(tmp_path / "in" / "gen.png"), str(tmp_path / "jpg"), head, device="cpu", progress=False,
                      out_format=".jpg")
    assert jpg.processed == 1
    back = read_provenance((tmp_path / "jpg" / "gen.png.jpg").read_bytes())  # JPEG: in the XMP packet
    assert back["seed"] == 7 and back["enhance"]["head_sha256"] == enhance["head_sha256"]


def test_python_api_enhance_keeps_provenance_on_save(head: str, tmp_path: Path) -> None:
    from facelift.api import enhance

    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8))
    with Image.open(io.BytesIO(png_bytes(image, PROV))) as generated:
        generated.load()
        out = enhance(generated, head=head, device="cpu")
    out.save(tmp_path / "enhanced.png")
    prov = read_provenance((tmp_path / "enhanced.png").read_bytes())
    assert prov.pop("enhance")["head_sha256"] == head_sha256(head) and prov == PROV
    plain = enhance(Image.fromarray(np.zeros((32, 32, 3), np.uint8)), head=head, device="cpu")
    plain.save(tmp_path / "plain.webp")
    assert set(read_provenance((tmp_path / "plain.webp").read_bytes())) == {"enhance"}
