"""Serve stage: ``facelift serve``, schnell + a trained head behind HTTP on Ray Serve, with a web page.

Reads a head (a head folder or a run URI) and the schnell weights of a profile; writes nothing (images go back
in the HTTP responses). Open :mod:`.app` first (the deployments and routes), then :mod:`.config` (the typed
settings) and :mod:`.run` (starting it on a Ray cluster); :mod:`.page` is the HTML.
"""

from facelift.tasks.serve.config import ServeConfig
from facelift.tasks.serve.run import serve_app, shutdown

__all__ = ["ServeConfig", "serve_app", "shutdown"]
