"""The Ray Serve application of ``facelift serve``: an HTTP ingress in front of one model deployment per GPU.

- ``ModelServer`` (:mod:`.model`; one replica per GPU, autoscaled between ``min_replicas`` and ``max_replicas``)
  holds FLUX.1-schnell and the head, loaded and warmed up in the constructor: a replica takes traffic only
  after it. Requests are batched with ``@serve.batch``; one request's failure fails only that request.
  ``max_ongoing_requests`` is at least the batch size (Ray's default of 5 would cap every batch at 5) and
  ``max_queued_requests`` bounds the queue: past it the caller gets ``BackPressureError``.
- ``Gateway`` (the ingress, FastAPI): the API key, request validation (:mod:`.schema`, before batching),
  ``POST /generate`` (one image, or JSON for several), ``POST /compare`` (the page), ``GET /healthz`` (the
  process is up), ``GET /readyz`` (the Serve controller's view: a model replica is RUNNING; never through the
  model's queue), ``GET /`` (the page). A full queue answers 503 with ``Retry-After``, a request over
  ``timeout_s`` 504, a replica that died under the request 503 with the reason; every error body is JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from facelift.errors import first_line
from facelift.tasks.generate import GenerateOptions
from facelift.tasks.serve.auth import bearer_ok, read_api_key
from facelift.tasks.serve.config import ServeConfig
from facelift.tasks.serve.model import Item, ModelServer
from facelift.tasks.serve.page import PAGE
from facelift.tasks.serve.readiness import readiness
from facelift.tasks.serve.schema import MEDIA_TYPES, BadRequest, GenerateRequest, parse_request, read_body

log = logging.getLogger(__name__)
MODEL_DEPLOYMENT = "ModelServer"
api = FastAPI(title="facelift", description="FLUX.1-schnell + a trained head")


def _header_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True)  # ASCII only: a valid header value


class Gateway:
    """The HTTP ingress: the API key, validation, timeouts, back-pressure answers, health and the page."""

    def __init__(self, model: Any, timeout_s: float, retry_after_s: int, api_key_file: str | None,
                 info: dict[str, str]) -> None:
        self.model, self.timeout_s, self.retry_after_s, self.info = model, timeout_s, retry_after_s, info
        self.api_key = read_api_key(api_key_file) if api_key_file else None
        if self.api_key is None:
            log.warning("serving WITHOUT an API key: anyone who reaches this port can generate")
        self.app_name = serve.get_replica_context().app_name

    async def _request(self, request: Request) -> GenerateRequest | Response:
        """The validated request, or the answer that refuses it (401 before anything is parsed, 413, 422)."""
        if self.api_key is not None and not bearer_ok(request.headers.get("authorization"), self.api_key):
            return JSONResponse({"error": "unauthorized: send 'Authorization: Bearer <API key>'"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            return parse_request(await read_body(request))
        except BadRequest as exc:
            return JSONResponse(exc.body, exc.status)

    async def _one(self, item: Item) -> dict[str, Any] | Response:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        busy = {"Retry-After": str(self.retry_after_s)}
        response = self.model.generate.remote(item)
        try:
            out = await asyncio.wait_for(response, self.timeout_s)
        except BackPressureError:
            return JSONResponse({"error": "busy: the generation queue is full, retry later"}, 503, headers=busy)
        except TimeoutError:
            response.cancel()
            return JSONResponse({"error": f"timeout: no image within {self.timeout_s:g} s"}, 504)
        except (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError) as exc:
            first = first_line(exc, 200) or type(exc).__name__
            return JSONResponse({"error": f"model replica failed during the request ({type(exc).__name__}: "
                                          f"{first}); retry"}, 503, headers=busy)
        if "error" in out:
            headers = busy if out["status"] == 503 else None
            return JSONResponse({"error": out["error"]}, out["status"], headers=headers)
        return out

    async def _render(self, req: GenerateRequest, schnell: bool = False) -> list[dict[str, Any]] | Response:
        items = [Item(req.prompt, seed, req.output_format, req.output_quality, schnell) for seed in req.seeds()]
        outs = await asyncio.gather(*(self._one(item) for item in items))
        failed = [o for o in outs if isinstance(o, Response)]
        return failed[0] if failed else outs  # type: ignore[return-value]

    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self) -> Response:
        ready, reason = await asyncio.to_thread(readiness, self.app_name, MODEL_DEPLOYMENT)
        if not ready:
            return JSONResponse({"ready": False, "reason": reason}, 503)
        return JSONResponse({"ready": True, **self.info})

    async def generate(self, request: Request) -> Response:
        req = await self._request(request)
        if isinstance(req, Response):
            return req
        outs = await self._render(req)
        if isinstance(outs, Response):
            return outs
        media = MEDIA_TYPES[req.output_format]
        if len(outs) == 1:
            [out] = outs
            return Response(out["image"], media_type=media,
                            headers={"X-Seed": str(out["seed"]), "X-Provenance": _header_json(out["provenance"]),
                                     "X-Batch-Size": str(out["batch"]),
                                     "X-Seconds-Schnell": f"{out['seconds']['schnell_s']:.4f}",
                                     "X-Seconds-Head": f"{out['seconds']['head_s']:.4f}"})
        return JSONResponse({"seeds": [o["seed"] for o in outs], "format": req.output_format,
                             "images": [_data_url(o["image"], media) for o in outs],
                             "provenance": [o["provenance"] for o in outs], "batch": [o["batch"] for o in outs]})

    async def compare(self, request: Request) -> Response:
        req = await self._request(request)
        if isinstance(req, Response):
            return req
        outs = await self._render(req.model_copy(update={"num_outputs": 1}), schnell=True)
        if isinstance(outs, Response):
            return outs
        [out] = outs
        media = MEDIA_TYPES[req.output_format]
        return JSONResponse({"schnell": _data_url(out["schnell"], media), "enhanced": _data_url(out["image"], media),
                             "seed": out["seed"], "provenance": out["provenance"], "seconds": out["seconds"],
                             "batch": out["batch"]})


def _data_url(data: bytes, media: str) -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def _routes() -> type:
    """Bind the Gateway's methods to FastAPI routes (class-based ingress); the body schema is documented here
    because the handlers parse it themselves (after the API key, with a capped 422)."""
    body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": GenerateRequest.model_json_schema()}}}}
    api.get("/", response_class=HTMLResponse)(Gateway.page)
    api.get("/healthz")(Gateway.healthz)
    api.get("/readyz")(Gateway.readyz)
    api.post("/generate", response_class=Response, openapi_extra=body,
             responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, 401: {}, 422: {}, 503: {},
                        504: {}})(Gateway.generate)
    api.post("/compare", openapi_extra=body)(Gateway.compare)
    return serve.ingress(api)(Gateway)


_Ingress = _routes()


def build_app(cfg: ServeConfig) -> Any:
    """The Serve application for ``cfg`` (deploy it with ``serve.run``)."""
    from facelift.config import resolve_config
    from facelift.tasks.generate import head_run_id

    model = serve.deployment(
        ModelServer, name=MODEL_DEPLOYMENT,
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
    info = {"schnell": resolve_config(cfg.profile).generation.schnell.model, "head_run_id": head_run_id(cfg.head)}
    safety = cfg.safety_checker_model if cfg.safety_checker else None
    return gateway.bind(model.bind(cfg.head, options, cfg.max_batch_size, cfg.batch_wait_s, cfg.warmup_sizes,
                                   safety), cfg.timeout_s, cfg.retry_after_s, cfg.api_key_file, info)


def require_key(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` without ``no_api_key``; a ValueError when they name no ``api_key_file`` and do not opt out."""
    args = dict(args)
    if not args.pop("no_api_key", False) and not args.get("api_key_file"):
        raise ValueError("api_key_file is required: the API is keyed by default (mount the key Secret, see "
                         "infra/k8s/rayservice.yaml); set no_api_key: true to serve without a key")
    return args


def app_builder(args: dict[str, Any]) -> Any:
    """Serve config / KubeRay ``RayService`` entry point (``import_path: facelift.tasks.serve.app:app_builder``):
    ``args`` are :class:`ServeConfig` fields (``head`` at least) and ``api_key_file`` (or ``no_api_key: true``)."""
    return build_app(ServeConfig(**require_key(args)))
