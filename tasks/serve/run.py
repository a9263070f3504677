"""Start the serve application on the current Ray cluster (``ray.init`` first, or it starts a local one)."""

from __future__ import annotations

import logging
from typing import Any

from facelift.tasks.serve.config import ServeConfig

log = logging.getLogger(__name__)
APP_NAME = "facelift"
# Set by ``facelift serve`` before it starts a local Ray, unless already set (a remote cluster takes them from its own
# nodes' environment; the process that starts a local Ray hands its environment to every actor):
# - Ray runs its workers at nice 15, so any ordinary process on the node takes ~28x their CPU share: beside two
#   CPU-bound processes the model replica spent over 10 minutes importing diffusers. A server replica runs at 0.
# - Ray Serve marks its HTTP proxy unhealthy after three readiness checks of 5 s and restarts it; on a loaded node
#   a proxy starts slower than that and ``serve.run`` failed ("The actor never ran").
LOCAL_RAY_ENV = {"RAY_worker_niceness": "0", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
                 "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


def serve_app(cfg: ServeConfig, blocking: bool = False) -> Any:
    """Deploy (or update) the application; returns once the models are loaded and the app is RUNNING."""
    from ray import serve

    from facelift.tasks.serve.app import build_app

    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.timeout_s + 5})
    handle = serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=blocking)
    log.info("facelift serve: http://%s:%d/ (head %s, profile %s, batch %d, queue %d)", cfg.host, cfg.port,
             cfg.head, cfg.profile, cfg.max_batch_size, cfg.max_queued_requests)
    return handle


def shutdown() -> None:
    from ray import serve

    serve.delete(APP_NAME)
    serve.shutdown()
