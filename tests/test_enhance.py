"""Enhance: engine size policies, the file pipeline (folder/glob/S3, corrupt files), CLI, flow and Python API."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facelift.api import enhance
from facelift.models.heads import HeadError, build_head, load_head
from facelift.storage import Store
from facelift.tasks.enhance import InferenceEngine, enhance_files, list_images, run_enhance


def _img(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("esa") / "head"
    build_head("esa_cyclegan", "debug").save(str(folder))
    return folder


@pytest.fixture()
def src(tmp_path) -> Path:
    """PNG/JPEG/WebP of mixed sizes (one odd), in a subfolder too, a corrupt PNG and a text file."""
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    _img(32, 32, 0).save(root / "a.png")
    _img(32, 32, 1).save(root / "b.jpg", quality=95)
    _img(37, 29, 2).save(root / "sub" / "c.webp", lossless=True)
    _img(32, 32, 3).save(root / "sub" / "d.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_pad_policy_matches_translate_and_keeps_size(head_dir: Path) -> None:
    head = load_head(str(head_dir))
    engine = InferenceEngine.from_head(head, device="cpu")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(engine(x), head.translate(x), atol=1e-5, rtol=1e-5)
    odd = torch.rand(1, 3, 29, 37) * 2 - 1
    assert engine(odd).shape == odd.shape
    with pytest.raises(ValueError, match="NCHW RGB"):
        engine(torch.rand(3, 32, 32))


def test_resize_and_tile_policies() -> None:
    conv = torch.nn.Conv2d(3, 3, 1)  # pointwise: tiling must reproduce the full-image output exactly
    x = torch.rand(1, 3, 70, 90) * 2 - 1
    full = InferenceEngine(conv, 1, device="cpu")(x)
    tiled = InferenceEngine(conv, 1, device="cpu", policy="tile", tile=32, overlap=8)(x)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=1e-5)
    resized = InferenceEngine(conv, 8, device="cpu", policy="resize", size=64)(x)
    assert resized.shape == x.shape
    with pytest.raises(ValueError, match="unknown size policy"):
        InferenceEngine(conv, 1, device="cpu", policy="crop")
    with pytest.raises(ValueError, match="not a multiple"):
        InferenceEngine(conv, 8, device="cpu", policy="resize", size=60)


def test_enhance_folder_with_corrupt_file(head_dir: Path, src: Path, tmp_path: Path) -> None:
    engine = InferenceEngine.from_head(load_head(str(head_dir)), device="cpu")
    report = enhance_files(str(src), str(tmp_path / "out"), engine, batch_size=2, workers=2, progress=False)
    assert report.processed == 4
    assert [Path(p).name for p, _ in report.failed] == ["broken.png"]
    assert "broken.png" in report.failed[0][0] and report.failed[0][1]
    out = tmp_path / "out"
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.suffix != ".jsonl")
    assert made == ["a.png", "b.jpg", "sub/c.webp", "sub/d.png"]
    for name in made:
        with Image.open(out / name) as got, Image.open(src / name) as orig:
            assert got.size == orig.size
    a_in = torch.from_numpy(np.asarray(Image.open(src / "a.png")).copy()).permute(2, 0, 1)[None]
    expected = engine.run_uint8(a_in)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), expected)  # PNG is lossless
    assert report.as_dict()["failed"][0]["path"].endswith("broken.png")


def test_glob_and_format(head_dir: Path, src: Path, tmp_path: Path) -> None:
    base, found = list_images(str(src / "sub" / "*.*"))
    assert [Path(f).name for f in found] == ["c.webp", "d.png"] and base == str(src / "sub")
    report = run_enhance(str(src / "*.png"), str(tmp_path / "o"), str(head_dir), device="cpu", out_format=".webp",
                         progress=False)
    assert report.processed == 1 and len(report.failed) == 1
    assert (tmp_path / "o" / "a.png.webp").is_file()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_images(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no PNG/JPEG/WebP"):
        list_images(str(src / "*.txt"))


def test_enhance_object_store_prefix(head_dir: Path, seaweed, tmp_path: Path) -> None:
    store = Store(f"s3://facelift/test-enhance-{tmp_path.name}", seaweed.endpoint)
    for i in range(3):
        buf = io.BytesIO()
        _img(32, 32, i).save(buf, "PNG")
        store.write_bytes(f"in/{i}.png", buf.getvalue())
    store.write_bytes("in/bad.jpg", b"garbage")
    report = run_enhance(store.url("in"), store.url("out"), str(head_dir), endpoint_url=seaweed.endpoint,
                         device="cpu", progress=False)
    assert report.processed == 3 and len(report.failed) == 1
    assert store.list("out") == ["0.png", "1.png", "2.png", "enhance-manifest.jsonl"]


def test_cli_enhance(head_dir: Path, src: Path, tmp_path: Path) -> None:
    from facelift.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["enhance", str(src), str(tmp_path / "cli"), "--head", str(head_dir), "--device",
                              "cpu", "--json", "--format", "png"])
    assert res.exit_code == 1, res.output  # one file skipped: partial success is signalled
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["processed"] == 4 and len(report["failed"]) == 1
    assert (tmp_path / "cli" / "b.jpg.png").is_file() and (tmp_path / "cli" / "a.png").is_file()
    bad = runner.invoke(app, ["enhance", str(src), str(tmp_path / "x"), "--head", str(tmp_path / "nohead")])
    assert bad.exit_code == 2 and "no head at" in bad.output


def test_python_api(head_dir: Path) -> None:
    images = [_img(32, 32, 0), _img(40, 24, 1), _img(32, 32, 2)]
    out = enhance(images, head=str(head_dir), device="cpu", batch_size=2)
    assert [o.size for o in out] == [i.size for i in images] and all(isinstance(o, Image.Image) for o in out)
    single = enhance(images[1], head=str(head_dir), device="cpu")
    np.testing.assert_array_equal(np.asarray(single), np.asarray(out[1]))
    arr = enhance(np.asarray(images[0]), head=load_head(str(head_dir)), device="cpu")
    np.testing.assert_array_equal(arr, np.asarray(out[0]))
    t = torch.rand(2, 3, 16, 16) * 2 - 1
    assert enhance(t, head=str(head_dir), device="cpu").shape == t.shape
    with pytest.raises(TypeError, match="expected a PIL image"):
        enhance([np.zeros((4, 4), np.uint8)], head=str(head_dir), device="cpu")
    with pytest.raises(HeadError, match="no head at"):
        enhance(images, head="/nonexistent/head", device="cpu")


def test_enhance_flow(prefect_harness, head_dir: Path, src: Path, tmp_path: Path) -> None:
    from facelift.flows.enhance import enhance_images

    result = enhance_images(str(src), str(tmp_path / "flow"), str(head_dir), device="cpu", batch_size=4)
    assert result["processed"] == 4 and result["failed"][0]["path"].endswith("broken.png")
    assert result["engine"]["compiled"] is False and result["engine"]["dtype"] == "float32"
