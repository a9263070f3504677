"""Enhance on real folders: decoding (16-bit, palette, alpha, CMYK, EXIF, ICC), size limit and tiling, per-batch
out-of-memory handling, per-file write failures, reruns, path safety, and memory bounded over many image sizes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps
from typer.testing import CliRunner

from facelift.tasks import enhance as enh
from facelift.tasks.enhance import InferenceEngine, enhance_files


def identity_engine() -> InferenceEngine:
    return InferenceEngine(torch.nn.Identity(), 1, device="cpu")


class MemoryLimited(torch.nn.Module):
    """x -> x / 2, raising the error a GPU raises when one call holds more than ``limit`` pixels."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.calls = limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        if x.shape[0] * x.shape[-2] * x.shape[-1] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 0.5


def gradient(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (fast to encode, distinct per seed)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                     np.full_like(xx, (seed * 37) % 256)], -1).astype(np.uint8)


def read(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def run(src: Path, dst: Path, engine: InferenceEngine | None = None, **kw):
    return enhance_files(str(src), str(dst), engine or identity_engine(), progress=False, **kw)


# -- decoding ---------------------------------------------------------------------------------------
def test_16bit_greyscale_png_keeps_its_levels(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    a16 = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256)).astype(np.uint16)  # 0..65535, mean 32767.5
    Image.fromarray(a16).save(tmp_path / "in" / "g16.png")
    assert read(tmp_path / "in" / "g16.png").mode == "I;16"
    report = run(tmp_path / "in", tmp_path / "out")
    assert report.processed == 1 and not report.failed
    out = np.asarray(read(tmp_path / "out" / "g16.png").convert("RGB")).astype(float)
    assert abs(out.mean() - 127.5) < 1.0, out.mean()  # the old decoder clipped to white: 254.5
    np.testing.assert_allclose(out[..., 0], np.round(a16 / 257.0), atol=1)


def test_palette_and_alpha_are_kept(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    rgba = np.dstack([gradient(40, 24), np.tile(np.arange(40, dtype=np.uint8) * 6, (24, 1))])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in" / "rgba.png")
    pal = Image.fromarray(gradient(32, 16)).quantize(8)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "in" / "pal.png", transparency=0)
    report = run(tmp_path / "in", tmp_path / "out", out_format=None)
    assert report.processed == 2 and not report.failed
    got = read(tmp_path / "out" / "rgba.png")
    assert got.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(got), rgba)  # identity head: colours and alpha unchanged
    want = np.asarray(read(tmp_path / "in" / "pal.png").convert("RGBA"))
    got = np.asarray(read(tmp_path / "out" / "pal.png"))
    assert got.shape == want.shape == (16, 32, 4)
    np.testing.assert_array_equal(got[..., 3], want[..., 3])
    assert (want[..., 3] == 0).any() and (want[..., 3] == 255).any()
    np.testing.assert_array_equal(got[..., :3], want[..., :3])


def test_alpha_dropped_for_jpeg_output_is_reported(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(np.dstack([gradient(16, 16), np.full((16, 16), 128, np.uint8)]), "RGBA").save(
        tmp_path / "in" / "a.png")
    report = run(tmp_path / "in", tmp_path / "out", out_format=".jpg")
    assert report.processed == 1 and read(tmp_path / "out" / "a.png.jpg").mode == "RGB"
    assert any("alpha" in note for note in report.notes)


def test_cmyk_jpeg_and_exif_orientation(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    rgb = gradient(48, 32, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "in" / "cmyk.jpg", quality=98)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(gradient(40, 20, 5)).save(tmp_path / "in" / "rot.png", exif=exif.tobytes())
    report = run(tmp_path / "in", tmp_path / "out")
    assert report.processed == 2 and not report.failed
    cmyk = np.asarray(read(tmp_path / "out" / "cmyk.jpg")).astype(int)
    assert np.abs(cmyk - rgb).mean() < 4
    rot = read(tmp_path / "out" / "rot.png")
    assert rot.size == (20, 40)  # displayed orientation
    want = ImageOps.exif_transpose(read(tmp_path / "in" / "rot.png"))
    np.testing.assert_array_equal(np.asarray(rot.convert("RGB")), np.asarray(want))
    assert rot.getexif().get(0x0112, 1) == 1  # not rotated twice by viewers


def test_icc_profile_converted_to_srgb(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = gradient(24, 24, 1)
    Image.fromarray(rgb).save(tmp_path / "in" / "icc.png", icc_profile=srgb)
    report = run(tmp_path / "in", tmp_path / "out")
    assert report.processed == 1
    assert np.abs(np.asarray(read(tmp_path / "out" / "icc.png")).astype(int) - rgb).max() <= 1


# -- size limit, tiling, out of memory --------------------------------------------------------------
def test_size_limit_skips_with_reason_and_big_images_are_tiled(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(gradient(64, 64)).save(tmp_path / "in" / "huge.png")
    Image.fromarray(gradient(48, 40)).save(tmp_path / "in" / "big.png")
    Image.fromarray(gradient(16, 16)).save(tmp_path / "in" / "small.png")
    module = MemoryLimited(limit=32 * 32)
    engine = InferenceEngine(module, 1, device="cpu", tile=32, overlap=8)
    report = run(tmp_path / "in", tmp_path / "out", engine, max_pixels=60 * 60, tile_pixels=32 * 32)
    assert report.processed == 2 and not report.failed
    assert [(Path(p).name, "too large" in why) for p, why in report.skipped] == [("huge.png", True)]
    assert not (tmp_path / "out" / "huge.png").exists()
    big = np.asarray(read(tmp_path / "out" / "big.png")).astype(int)
    want = np.round((gradient(48, 40).astype(float) / 127.5 - 1) * 0.5 * 127.5 + 127.5)
    assert np.abs(big - want).max() <= 1  # pointwise head: tiling reproduces the whole-image result
    assert max(h * w for _, _, h, w in module.calls) <= 32 * 32


def test_out_of_memory_retries_per_image_then_tiled_then_records(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(4):
        Image.fromarray(gradient(24, 24, i)).save(tmp_path / "in" / f"{i}.png")
    Image.fromarray(gradient(40, 40)).save(tmp_path / "in" / "wide.png")
    module = MemoryLimited(limit=24 * 24)  # a batch of 2 does not fit, one image does; 40² fits only tiled
    engine = InferenceEngine(module, 1, device="cpu", tile=24, overlap=4)
    report = run(tmp_path / "in", tmp_path / "out", engine, batch_size=2, tile_pixels=10**6)
    assert report.processed == 5 and not report.failed, report.failed
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "1.png", "2.png", "3.png",
                                                                        "wide.png"]

    module = MemoryLimited(limit=10)  # nothing fits, not even a tile: per-file failures, the run completes
    engine = InferenceEngine(module, 1, device="cpu", tile=24, overlap=4)
    report = run(tmp_path / "in", tmp_path / "out2", engine, batch_size=2)
    assert report.processed == 0 and len(report.failed) == 5
    assert all("out of memory" in why for _, why in report.failed)


def test_failed_write_recorded_per_file(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(gradient(16, 16)).save(tmp_path / "in" / f"{name}.png")
    (tmp_path / "out" / "b.png").mkdir(parents=True)  # a folder where the output file should go
    report = run(tmp_path / "in", tmp_path / "out")
    assert report.processed == 2
    assert [Path(p).name for p, _ in report.failed] == ["b.png"] and "write" in report.failed[0][1]
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "c.png").is_file()
    assert not [p.name for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]  # no temp file left behind


def test_rerun_skips_existing_outputs(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(gradient(16, 16, i)).save(tmp_path / "in" / f"{i}.png")
    first = run(tmp_path / "in", tmp_path / "out")
    assert first.processed == 3 and first.existing == 0
    (tmp_path / "out" / "1.png").unlink()
    stamp = (tmp_path / "out" / "0.png").stat().st_mtime_ns
    again = run(tmp_path / "in", tmp_path / "out")
    assert again.processed == 1 and again.existing == 2
    assert (tmp_path / "out" / "0.png").stat().st_mtime_ns == stamp and (tmp_path / "out" / "1.png").is_file()
    forced = run(tmp_path / "in", tmp_path / "out", overwrite=True)
    assert forced.processed == 3 and forced.existing == 0


# -- paths ------------------------------------------------------------------------------------------
def test_target_key_refuses_escapes() -> None:
    assert enh.target_key("bucket/in/sub/a.png", "bucket/in", None) == "sub/a.png"
    assert enh.target_key("s3://bucket/in/a.jpg", "s3://bucket/in", ".png") == "a.jpg.png"  # never a.png's name
    assert enh.target_key("s3://bucket/in/a.png", "s3://bucket/in", ".png") == "a.png"
    assert enh.target_key("bucket/in/a.jpeg", "bucket/in", ".jpg") == "a.jpeg"  # already JPEG
    for bad in ("bucket/in/../../x.png", "bucket/in/../x.png", "bucket/in/a/../../../x.png", "bucket/other/x.png"):
        with pytest.raises(ValueError, match="escapes"):
            enh.target_key(bad, "bucket/in", None)


def test_object_name_escaping_dst_is_refused(tmp_path: Path) -> None:
    """An object store may hold a key like ``in/../../x.png`` (AWS S3 does; SeaweedFS refuses such keys, so the
    test uses fsspec's in-memory store, which keeps the literal key as S3 does)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/t-{tmp_path.name}"
    buf = io.BytesIO()
    Image.fromarray(gradient(16, 16)).save(buf, "PNG")
    fs.pipe_file(f"{root}/src/in/ok.png", buf.getvalue())
    fs.pipe_file(f"{root}/src/in/../../x.png", buf.getvalue())
    fs.pipe_file(f"{root}/src/in/a/../b.png", buf.getvalue())
    try:
        report = enhance_files(f"memory://{root}/src/in", f"memory://{root}/dst/out", identity_engine(),
                               progress=False)
        assert report.processed == 1
        assert sorted((p.rsplit("/in/", 1)[1], why) for p, why in report.failed) == [
            ("../../x.png", "refused: the name escapes the destination"),
            ("a/../b.png", "refused: the name escapes the destination")]
        assert sorted(fs.find(f"{root}/dst")) == [f"{root}/dst/out/enhance-manifest.jsonl", f"{root}/dst/out/ok.png"]
        assert not fs.exists(f"{root}/dst/x.png") and not fs.exists(f"{root}/x.png")
    finally:
        fs.rm(root, recursive=True)


def test_dst_equal_or_inside_src_is_refused(tmp_path: Path) -> None:
    from facelift.cli.main import app

    (tmp_path / "in").mkdir()
    Image.fromarray(gradient(16, 16)).save(tmp_path / "in" / "a.png")
    before = (tmp_path / "in" / "a.png").read_bytes()
    for dst in (tmp_path / "in", tmp_path / "in" / "out", tmp_path / "in" / "."):
        with pytest.raises(ValueError, match="would overwrite|inside the source"):
            run(tmp_path / "in", dst)
    with pytest.raises(ValueError, match="would overwrite"):
        run(tmp_path / "in" / "a.png", tmp_path / "in")
    assert (tmp_path / "in" / "a.png").read_bytes() == before
    res = CliRunner().invoke(app, ["enhance", str(tmp_path / "in"), str(tmp_path / "in"), "--head", str(tmp_path)])
    # refused before the head is loaded (there is none here)
    assert res.exit_code == 2 and "would overwrite" in res.output and "Traceback" not in res.output


# -- memory -----------------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from facelift.tasks.enhance import InferenceEngine, enhance_files
    src, dst, n, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    engine = InferenceEngine(torch.nn.Conv2d(3, 3, 1), 1, device="cpu")
    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = enhance_files(f"{src}/*-n{n}.png", dst, engine, batch_size=8, workers=2, hold_pixels=hold,
                           progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"processed": report.processed, "base_mb": base / 1024, "peak_mb": peak / 1024,
                      "held_max": report.peak_held_pixels}))
""")


def test_memory_bounded_over_300_distinct_sizes(tmp_path: Path) -> None:
    """300 images of distinct sizes (~0.75 MP each, ~660 MB held at once by the old pipeline) vs 30: the peak
    resident memory must not grow with the number of sizes, and the held pixels stay within the budget."""
    src = tmp_path / "in"
    src.mkdir()
    sizes = [(600 + i, 800 + (i * 7) % 300) for i in range(300)]
    for n in (30, 300):
        for i, (w, h) in enumerate(sizes[:n]):
            Image.fromarray(gradient(w, h, i)).save(src / f"{i:03d}-n{n}.png", compress_level=1)
    hold = 4_000_000
    results = {}
    for n in (30, 300):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(src), str(tmp_path / f"out{n}"), str(n),
                              str(hold)], capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        results[n] = json.loads(out.stdout.strip().splitlines()[-1])
        assert results[n]["processed"] == n
        assert results[n]["held_max"] <= hold + 900 * 1100  # the budget, plus the image that crossed it
    growth = results[300]["peak_mb"] - results[30]["peak_mb"]
    assert growth < 150, results  # the old pipeline grew by ~740 MB here (every size held to the end); now ~90


def test_cli_limits_rerun_and_notes(tmp_path: Path) -> None:
    """What users run: --max-pixels skips with a reason (exit 0), a rerun does nothing, --overwrite redoes."""
    from facelift.cli.main import app
    from facelift.models.heads import build_head

    torch.manual_seed(0)
    build_head("esa_cyclegan", "debug").save(str(tmp_path / "head"))
    (tmp_path / "in").mkdir()
    Image.fromarray(gradient(16, 16)).save(tmp_path / "in" / "small.png")
    Image.fromarray(np.dstack([gradient(16, 16), np.full((16, 16), 9, np.uint8)]), "RGBA").save(
        tmp_path / "in" / "alpha.png")
    Image.fromarray(gradient(64, 64)).save(tmp_path / "in" / "big.png")
    args = ["enhance", str(tmp_path / "in"), str(tmp_path / "out"), "--head", str(tmp_path / "head"), "--device",
            "cpu", "--max-pixels", "1000", "--format", "jpg"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "enhanced 2 images" in res.output and "skipped 1" in res.output
    assert "big.png: too large: 64x64" in res.output and "alpha dropped: 1 image" in res.output
    again = runner.invoke(app, [*args, "--json"])
    report = json.loads(again.stdout[again.stdout.index("{"):])
    assert again.exit_code == 0 and report["processed"] == 0 and report["existing"] == 2
    forced = runner.invoke(app, [*args, "--json", "--overwrite"])
    assert json.loads(forced.stdout[forced.stdout.index("{"):])["processed"] == 2


# -- issue 35: retry frees the failed batch, rerun key includes the head, names, glob vs dst, Pillow's limit -----
class OutOfMemoryOnBatches(torch.nn.Module):
    """x -> x / 2; a batch of more than one image raises CUDA's OutOfMemoryError, keeping a weakref to the batch.
    Every later call records whether a failed batch is still alive (it holds the GPU memory the retry needs)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[weakref.ref] = []
        self.alive_at_retry: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.alive_at_retry += [ref() is not None for ref in self.failed]
        if x.shape[0] > 1:
            self.failed.append(weakref.ref(x))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 0.5


def test_out_of_memory_retry_runs_after_the_failed_batch_is_freed(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray(gradient(16, 16, i)).save(tmp_path / "in" / f"{i}.png")
    module = OutOfMemoryOnBatches()
    report = run(tmp_path / "in", tmp_path / "out", InferenceEngine(module, 1, device="cpu"), batch_size=2)
    assert report.processed == 2 and not report.failed
    assert len(module.failed) == 1 and module.alive_at_retry == [False, False]  # freed before each retry


def _head(folder: Path, seed: int) -> str:
    from facelift.models.heads import build_head

    torch.manual_seed(seed)
    build_head("esa_cyclegan", "debug").save(str(folder))
    return str(folder)


def test_rerun_with_another_head_is_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray(gradient(16, 16, i)).save(tmp_path / "in" / f"{i}.png")
    head_a, head_b = _head(tmp_path / "a", 0), _head(tmp_path / "b", 1)
    first = enh.run_enhance(str(tmp_path / "in"), str(tmp_path / "out"), head_a, device="cpu", progress=False)
    assert first.processed == 2
    same = enh.run_enhance(str(tmp_path / "in"), str(tmp_path / "out"), head_a, device="cpu", progress=False)
    assert same.processed == 0 and same.existing == 2
    with pytest.raises(ValueError, match="another head"):
        enh.run_enhance(str(tmp_path / "in"), str(tmp_path / "out"), head_b, device="cpu", progress=False)
    from facelift.cli.main import app

    res = CliRunner().invoke(app, ["enhance", str(tmp_path / "in"), str(tmp_path / "out"), "--head", head_b,
                                   "--device", "cpu"])
    assert res.exit_code == 2 and "another head" in res.output and "Traceback" not in res.output
    redone = enh.run_enhance(str(tmp_path / "in"), str(tmp_path / "out"), head_b, device="cpu", progress=False,
                             overwrite=True)
    assert redone.processed == 2
    again = enh.run_enhance(str(tmp_path / "in"), str(tmp_path / "out"), head_b, device="cpu", progress=False)
    assert again.processed == 0 and again.existing == 2
    with pytest.raises(ValueError, match="another head"):  # head a's outputs were replaced by head b's
        enh.run_enhance(str(tmp_path / "in"), str(tmp_path / "out"), head_a, device="cpu", progress=False)


def test_same_stem_different_formats_do_not_collide(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray(gradient(16, 16, 1)).save(tmp_path / "in" / "a.png")
    Image.fromarray(gradient(16, 16, 2)).save(tmp_path / "in" / "a.jpg", quality=95)
    report = run(tmp_path / "in", tmp_path / "out", out_format=".png")
    assert report.processed == 2 and not report.failed
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png") == ["a.jpg.png", "a.png"]


def test_glob_source_excludes_the_destination(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(gradient(16, 16, 1)).save(tmp_path / "in" / "a.png")
    Image.fromarray(gradient(16, 16, 2)).save(tmp_path / "in" / "sub" / "b.png")
    first = run(f"{tmp_path}/in/**/*.png", tmp_path / "in" / "out")
    assert first.processed == 2
    again = run(f"{tmp_path}/in/**/*.png", tmp_path / "in" / "out", overwrite=True)
    assert again.processed == 2  # not 4: the outputs under in/out/ are not sources
    assert not (tmp_path / "in" / "out" / "out").exists()


def test_max_pixels_above_pillows_limit_raises_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2x this (64x64 = 4096) as a bomb
    (tmp_path / "in").mkdir()
    Image.fromarray(gradient(64, 64)).save(tmp_path / "in" / "big.png")
    report = run(tmp_path / "in", tmp_path / "out", max_pixels=10_000)
    assert report.processed == 1 and not report.skipped, report.skipped
    assert Image.MAX_IMAGE_PIXELS >= 10_000
    small = run(tmp_path / "in", tmp_path / "out2", max_pixels=100)  # our own limit still applies
    assert small.processed == 0 and "too large: 64x64" in small.skipped[0][1]
