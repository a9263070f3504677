"""facelift serve without Ray (fast): request validation before batching, per-request isolation inside a batch
(a bad item, a CUDA OOM split once), the API key file and header, the warm-up and the tiny-profile notice."""

from __future__ import annotations

import gc
import json
import stat
import weakref
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from facelift.tasks.serve.batching import ItemError, run_isolated
from facelift.tasks.serve.schema import BadRequest, GenerateRequest, parse_request


def _parse(body: object) -> GenerateRequest:
    return parse_request(json.dumps(body).encode())


def test_unknown_fields_are_refused_with_a_short_body() -> None:
    """An unknown field is a 422 naming it; a 10 MB prompt is refused without being echoed back."""
    with pytest.raises(BadRequest) as err:
        _parse({"prompt": "Ada", "width": 512})
    assert err.value.status == 422 and "width" in err.value.body["error"]
    huge = "x" * 60_000
    with pytest.raises(BadRequest) as err:
        _parse({"prompt": huge, "num_outputs": 9})
    text = json.dumps(err.value.body)
    assert err.value.status == 422 and len(text) < 3000 and "xxxxxxxxxx" not in text
    assert "prompt" in text and "num_outputs" in text
    with pytest.raises(BadRequest) as err:
        parse_request(json.dumps({"prompt": "x" * 10_000_000}).encode())
    assert err.value.status == 413 and len(json.dumps(err.value.body)) < 200


def test_request_fields_and_seeds() -> None:
    req = _parse({"prompt": "Ada", "seed": 7, "num_outputs": 3, "output_format": "webp", "output_quality": 80})
    assert req.seeds() == [7, 8, 9] and req.output_format == "webp"
    a, b = _parse({"prompt": "Ada"}).seeds(), _parse({"prompt": "Ada"}).seeds()
    assert len(a) == 1 and a != b  # random when absent (a 1 in 2**32 clash)
    for bad in ({"prompt": "Ada", "num_outputs": 0}, {"prompt": "Ada", "num_outputs": 5},
                {"prompt": "Ada", "output_format": "gif"}, {"prompt": "Ada", "seed": -1},
                {"prompt": "Ada", "seed": 2**63}):
        with pytest.raises(BadRequest):
            _parse(bad)


@pytest.mark.parametrize("prompt", ["", " ", "\t\n", "\u3000", "\x1f", "\x1c \x1d"])
def test_a_prompt_without_text_is_refused_before_batching(prompt: str) -> None:
    """U+001C-U+001F pass a regex `\\S` but not `str.strip()`, the generator's own test: refused here."""
    with pytest.raises(BadRequest) as err:
        _parse({"prompt": prompt})
    assert err.value.status == 422 and "prompt" in err.value.body["error"]


def test_one_failing_item_fails_only_itself() -> None:
    calls: list[int] = []

    def render(items: list[str]) -> list[str]:
        calls.append(len(items))
        if "bad" in items:
            raise ValueError("cannot render 'bad'")
        return [i.upper() for i in items]

    out = run_isolated(render, ["a", "b", "bad", "c"])
    assert out[:2] == ["A", "B"] and out[3] == "C"
    assert isinstance(out[2], ItemError) and out[2].status == 422 and "cannot render" in out[2].error
    assert calls == [4, 1, 1, 1, 1]
    boom = run_isolated(lambda items: [1 / 0 for _ in items], ["a"])
    assert boom == [ItemError(500, "generation failed (ZeroDivisionError: division by zero)")]


def test_oom_splits_the_batch_once_and_frees_the_failed_batch() -> None:
    """A CUDA OOM at 8 retries as 4 + 4, after the failed attempt's tensors are gone (weakref check); a half that
    runs out of memory again answers 503, with no further split."""
    calls: list[int] = []
    refs: list[weakref.ref] = []

    def render(items: list[int]) -> list[int]:
        assert all(r() is None for r in refs), "the failed batch's tensor is still alive during the retry"
        calls.append(len(items))
        batch = torch.zeros(len(items), 16)
        refs.append(weakref.ref(batch))
        if len(items) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in items]

    gc.disable()  # the weakref must die from reference counting alone, not a lucky collection
    try:
        assert run_isolated(render, list(range(8))) == [i * 10 for i in range(8)]
    finally:
        gc.enable()
    assert calls == [8, 4, 4]

    calls.clear()

    def always_oom(items: list[int]) -> list[int]:
        calls.append(len(items))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    out = run_isolated(always_oom, list(range(5)))
    assert calls == [5, 3, 2] and all(isinstance(o, ItemError) and o.status == 503 for o in out)


def test_bearer_header() -> None:
    from facelift.tasks.serve.auth import bearer_ok

    assert bearer_ok("Bearer s3cret", "s3cret") and bearer_ok("bearer  s3cret ", "s3cret")
    assert not bearer_ok(None, "s3cret") and not bearer_ok("Bearer wrong", "s3cret")
    assert not bearer_ok("Basic s3cret", "s3cret") and not bearer_ok("Bearer ", "s3cret")


def test_cli_creates_a_private_key_file_prints_its_path_and_the_tiny_notice(tmp_path: Path, monkeypatch) -> None:
    """`facelift serve` creates the key file 0600 with a fresh key, prints its path but never the key, says the
    tiny profile is the test profile, and a start failure is one line."""
    import ray

    from facelift.cli.main import app
    from facelift.cli.serve import TINY_NOTICE
    from facelift.models.heads import build_head

    build_head("esa_cyclegan", "debug").save(str(tmp_path / "runs" / "r1" / "head"))

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise ConnectionError("could not reach the Ray cluster at ray://nowhere:10001")

    monkeypatch.setattr(ray, "init", no_cluster)
    key_file = tmp_path / "secrets" / "api-key"
    res = CliRunner().invoke(app, ["serve", "--head", str(tmp_path / "runs" / "r1"), "--api-key-file", str(key_file)])
    key = key_file.read_text().strip()
    assert len(key) >= 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert str(key_file) in res.output and key not in res.output
    assert TINY_NOTICE in res.output and res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("error: the serve application failed to start")
    again = CliRunner().invoke(app, ["serve", "--head", str(tmp_path / "runs" / "r1"), "--api-key-file",
                                     str(key_file), "--profile", "flux"])
    assert key_file.read_text().strip() == key and TINY_NOTICE not in again.output  # kept, not replaced
    key_file.write_text("")
    empty = CliRunner().invoke(app, ["serve", "--head", str(tmp_path / "runs" / "r1"), "--api-key-file",
                                     str(key_file)])
    assert empty.exit_code == 2 and "is empty" in empty.output and "Traceback" not in empty.output


class FakeGenerator:
    """Stands in for schnell + head: 16x16 images whose colour is the seed; records each call's batch size."""

    calls: list[int] = []

    def __init__(self, head: str, options: object) -> None:
        self.engine = type("Engine", (), {"device": torch.device("cpu")})()

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[object]:
        from facelift.tasks.generate import Generated

        FakeGenerator.calls.append(len(prompts))
        img = [torch.full((3, 16, 16), s % 256, dtype=torch.uint8) for s in seeds]
        return [Generated(p, s, i, i, {"prompt": p, "seed": s}, {"schnell_s": 0.0, "head_s": 0.0})
                for p, s, i in zip(prompts, seeds, img, strict=True)]


def test_replica_warms_up_at_every_batch_size(monkeypatch) -> None:
    """The model replica runs one batch at each configured size in its constructor, before Serve routes to it."""
    from facelift.tasks.serve import model as model_mod
    from facelift.tasks.serve.config import ServeConfig

    monkeypatch.setattr(model_mod, "Generator", FakeGenerator)
    FakeGenerator.calls = []
    cfg = ServeConfig(head="h", max_batch_size=4)
    assert cfg.warmup_sizes == [1, 2, 3, 4]
    server = model_mod.ModelServer("h", {}, 4, 0.01, cfg.warmup_sizes)
    assert FakeGenerator.calls == [1, 2, 3, 4] and set(server.warmup_seconds) == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="warmup_sizes"):
        ServeConfig(head="h", max_batch_size=4, warmup_sizes=[8])


def _tiny_safety_checker(folder: Path, threshold: float) -> str:
    """diffusers' safety checker with a tiny random CLIP (the real class and preprocessing) and every concept
    threshold set to ``threshold``: -2 flags every image (cosine > -2), 2 none."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    cfg = CLIPConfig(text_config=small, vision_config={**small, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    model = StableDiffusionSafetyChecker(cfg)
    with torch.no_grad():
        model.concept_embeds_weights.fill_(threshold)
        model.special_care_embeds_weights.fill_(threshold)
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def test_safety_checker_fails_only_the_flagged_request(tmp_path: Path, monkeypatch) -> None:
    """On by default for flux, off for tiny; a flagged image is never returned: its request alone gets 422."""
    from facelift.tasks.serve import model as model_mod
    from facelift.tasks.serve.config import ServeConfig
    from facelift.tasks.serve.model import Item
    from facelift.tasks.serve.safety import FLAGGED, SafetyChecker

    assert ServeConfig(head="h", profile="flux").safety_checker is True
    assert ServeConfig(head="h").safety_checker is False
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    assert SafetyChecker(_tiny_safety_checker(tmp_path / "all", -2.0))(images) == [True] * 3
    assert SafetyChecker(_tiny_safety_checker(tmp_path / "none", 2.0))(images) == [False] * 3
    with pytest.raises(RuntimeError, match="could not be loaded"):
        SafetyChecker(str(tmp_path / "missing"))

    monkeypatch.setattr(model_mod, "Generator", FakeGenerator)
    server = model_mod.ModelServer("h", {}, 4, 0.01, [], _tiny_safety_checker(tmp_path / "all", -2.0))

    class SeedTwo:  # flags seed 2's picture only
        name = "test"

        def __call__(self, imgs: torch.Tensor) -> list[bool]:
            return [int(i[0, 0, 0]) == 2 for i in imgs]

    server.safety = SeedTwo()
    out = server._render_isolated([Item("a", 1), Item("b", 2), Item("c", 3)])
    assert out[1] == {"status": 422, "error": FLAGGED}
    assert [o["seed"] for o in (out[0], out[2])] == [1, 3] and out[0]["image"][:4] == b"\x89PNG"
    assert out[0]["provenance"]["safety_checker"] == "test"


def test_default_key_file_sits_beside_the_stack_secrets(tmp_path: Path, monkeypatch) -> None:
    """Without --api-key-file the key is `serve-api-key` in the stack's secrets folder ($STACK_DIR/secrets), and
    no FACELIFT_* variable is read for it."""
    from facelift.cli.serve import default_api_key_path, ensure_api_key

    monkeypatch.setenv("STACK_DIR", str(tmp_path / "stack"))
    monkeypatch.setenv("FACELIFT_SERVE__API_KEY", "from-the-environment")
    path = ensure_api_key(default_api_key_path())
    assert path == tmp_path / "stack" / "secrets" / "serve-api-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "from-the-environment" not in path.read_text()
    path.chmod(0o644)  # made private again
    assert ensure_api_key(path) == path and stat.S_IMODE(path.stat().st_mode) == 0o600


class _StreamingRequest:
    """A Starlette-like request: headers and an async body stream that counts the chunks the server pulled."""

    def __init__(self, chunks: int, chunk_bytes: int, content_length: int | None) -> None:
        self.headers = {} if content_length is None else {"content-length": str(content_length)}
        self.chunks, self.chunk_bytes, self.pulled = chunks, chunk_bytes, 0

    async def stream(self):
        for _ in range(self.chunks):
            self.pulled += 1
            yield b"x" * self.chunk_bytes


def test_an_oversized_body_is_refused_before_it_is_read_whole() -> None:
    """A declared Content-Length over the cap is a 413 before one byte is read; a chunked body without a length is
    cut off as soon as it passes the cap (the old ingress read the whole body first, then refused it)."""
    import asyncio

    from facelift.tasks.serve.schema import MAX_BODY_BYTES, read_body

    declared = _StreamingRequest(chunks=1000, chunk_bytes=8192, content_length=1000 * 8192)
    with pytest.raises(BadRequest) as err:
        asyncio.run(read_body(declared))
    assert err.value.status == 413 and declared.pulled == 0
    chunked = _StreamingRequest(chunks=1000, chunk_bytes=8192, content_length=None)
    with pytest.raises(BadRequest) as err:
        asyncio.run(read_body(chunked))
    assert err.value.status == 413 and chunked.pulled == MAX_BODY_BYTES // 8192 + 1
    small = _StreamingRequest(chunks=2, chunk_bytes=10, content_length=20)
    assert asyncio.run(read_body(small)) == b"x" * 20


def test_a_serve_config_without_a_key_is_refused_unless_opted_out() -> None:
    """The RayService / Serve-config entry point keys the API by default: no ``api_key_file`` is an error naming
    the opt-out (the old builder served an open API silently)."""
    from facelift.tasks.serve.app import require_key

    with pytest.raises(ValueError, match="api_key_file"):
        require_key({"head": "h"})
    assert require_key({"head": "h", "no_api_key": True}) == {"head": "h"}
    assert require_key({"head": "h", "api_key_file": "/k"}) == {"head": "h", "api_key_file": "/k"}


def test_a_cpu_allocator_oom_splits_the_batch_too() -> None:
    """The CPU allocator's out-of-memory RuntimeError (a CPU or MPS replica) splits the batch like a CUDA OOM,
    with enhance's one definition of out of memory (the old check knew only torch.cuda.OutOfMemoryError and
    failed all eight requests)."""
    calls: list[int] = []

    def render(items: list[int]) -> list[int]:
        calls.append(len(items))
        if len(items) > 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return items

    assert run_isolated(render, list(range(8))) == list(range(8)) and calls == [8, 4, 4]
