"""The Ray Serve application of ``facelift serve``: an HTTP ingress in front of one model deployment per GPU.

- ``ModelServer`` (one replica per GPU, autoscaled between ``min_replicas`` and ``max_replicas``) holds
  FLUX.1-schnell and the head (:class:`facelift.tasks.generate.Generator`), loaded once in the constructor: a
  replica takes traffic only after it. Requests are batched dynamically with ``@serve.batch``;
  ``max_ongoing_requests`` is set to at least the batch size (Ray's default of 5 would silently cap every batch
  at 5) and ``max_queued_requests`` bounds the queue: past it the caller gets ``BackPressureError``.
- ``Gateway`` (the ingress, FastAPI): ``POST /generate`` -> ``image/png`` (schnell + head), ``POST /compare`` ->
  both images as JSON (the page uses it), ``GET /healthz`` (the process is up), ``GET /readyz`` (a model
  replica answers: the models are loaded), ``GET /`` (the page). A full queue answers 503 with ``Retry-After``,
  a request over ``timeout_s`` 504, a replica that died under the request 503 with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from ray import serve

from facelift.errors import first_line
from facelift.tasks.generate import GenerateOptions, Generator, png_bytes
from facelift.tasks.serve.config import ServeConfig
from facelift.tasks.serve.page import PAGE

log = logging.getLogger(__name__)


class GenerateRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=1000, pattern=r"\S")  # a word, not only blanks
    seed: int = Field(0, ge=0, lt=2**63)


class ModelServer:
    """schnell + head on one GPU (or CPU for the tiny profile), batched dynamically."""

    def __init__(self, head: str, options: dict[str, Any], max_batch_size: int, batch_wait_s: float) -> None:
        self.generator = Generator(head, GenerateOptions(**options))
        self.generate_batch.set_max_batch_size(max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_s)

    def ready(self) -> dict[str, Any]:
        return self.generator.base_provenance

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batch(self, prompts: list[str], seeds: list[int], schnell: list[bool]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._generate, prompts, seeds, schnell)  # the event loop keeps serving

    def _generate(self, prompts: list[str], seeds: list[int], schnell: list[bool]) -> list[dict[str, Any]]:
        """The batch's images as PNG; schnell's own only for the requests that asked for it (``/compare``)."""
        results = self.generator(prompts, seeds)
        return [{"schnell": png_bytes(g.schnell, {**g.provenance, "image": "schnell"}, compress_level=1)
                 if want else None,
                 "enhanced": png_bytes(g.enhanced, {**g.provenance, "image": "schnell+head"}, compress_level=1),
                 "seconds": g.seconds, "batch": len(prompts)} for g, want in zip(results, schnell, strict=True)]

    async def generate(self, prompt: str, seed: int, schnell: bool = False) -> dict[str, Any]:
        return await self.generate_batch(prompt, seed, schnell)


api = FastAPI(title="facelift", description="FLUX.1-schnell + a trained head")


class Gateway:
    """The HTTP ingress: validation, timeouts, back-pressure answers, health and the page."""

    def __init__(self, model: Any, timeout_s: float, retry_after_s: int) -> None:
        self.model, self.timeout_s, self.retry_after_s = model, timeout_s, retry_after_s

    async def _generate(self, req: GenerateRequest, schnell: bool = False) -> dict[str, Any] | Response:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        busy = {"Retry-After": str(self.retry_after_s)}
        response = self.model.generate.remote(req.prompt, req.seed, schnell)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except BackPressureError:
            return JSONResponse({"error": "busy: the generation queue is full, retry later"}, 503, headers=busy)
        except TimeoutError:
            response.cancel()
            return JSONResponse({"error": f"timeout: no image within {self.timeout_s:g} s"}, 504)
        except (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError) as exc:
            first = first_line(exc, 200) or type(exc).__name__
            return JSONResponse({"error": f"model replica failed during the request ({type(exc).__name__}: "
                                          f"{first}); retry"}, 503, headers=busy)

    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self) -> Response:
        try:
            info = await asyncio.wait_for(self.model.ready.remote(), 5.0)
        except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason
            return JSONResponse({"ready": False, "reason": type(exc).__name__}, 503)
        return JSONResponse({"ready": True, "schnell": info["schnell_model"], "head_run_id": info["head_run_id"]})

    async def generate(self, req: GenerateRequest) -> Response:
        out = await self._generate(req)
        if isinstance(out, Response):
            return out
        return Response(out["enhanced"], media_type="image/png",
                         headers={"X-Batch-Size": str(out["batch"]),
                                  "X-Seconds-Schnell": f"{out['seconds']['schnell_s']:.4f}",
                                  "X-Seconds-Head": f"{out['seconds']['head_s']:.4f}"})

    async def compare(self, req: GenerateRequest) -> Response:
        out = await self._generate(req, schnell=True)
        if isinstance(out, Response):
            return out

        def url(data: bytes) -> str:
            return "data:image/png;base64," + base64.b64encode(data).decode()

        return JSONResponse({"schnell": url(out["schnell"]), "enhanced": url(out["enhanced"]),
                             "seconds": out["seconds"], "batch": out["batch"]})


def _routes() -> type:
    """Bind the Gateway's methods to FastAPI routes (class-based ingress)."""
    api.get("/", response_class=HTMLResponse)(Gateway.page)
    api.get("/healthz")(Gateway.healthz)
    api.get("/readyz")(Gateway.readyz)
    api.post("/generate", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 503: {}, 504: {}})(Gateway.generate)
    api.post("/compare")(Gateway.compare)
    return serve.ingress(api)(Gateway)


_Ingress = _routes()


def build_app(cfg: ServeConfig) -> Any:
    """The Serve application for ``cfg`` (deploy it with ``serve.run``)."""
    model = serve.deployment(
        ModelServer, name="ModelServer",
        ray_actor_options={"num_gpus": cfg.num_gpus, "num_cpus": cfg.num_cpus},
        max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests,
        autoscaling_config={"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                            "initial_replicas": cfg.min_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests,
                            "upscale_delay_s": 10, "downscale_delay_s": 300},
        health_check_period_s=10, health_check_timeout_s=30, graceful_shutdown_timeout_s=cfg.timeout_s,
    )
    gateway = serve.deployment(_Ingress, name="Gateway", num_replicas=1, max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0})
    options = asdict(GenerateOptions(profile=cfg.profile, size=cfg.size, batch_size=cfg.max_batch_size,
                                     device=cfg.device, endpoint_url=cfg.endpoint_url, cache_dir=cfg.cache_dir))
    return gateway.bind(model.bind(cfg.head, options, cfg.max_batch_size, cfg.batch_wait_s), cfg.timeout_s,
                        cfg.retry_after_s)


def app_builder(args: dict[str, Any]) -> Any:
    """Serve config / KubeRay ``RayService`` entry point (``import_path: facelift.tasks.serve.app:app_builder``):
    ``args`` are :class:`ServeConfig` fields (``head`` at least)."""
    return build_app(ServeConfig(**args))
