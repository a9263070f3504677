"""Readiness from the Serve controller's view of the application (``serve.status()``), never through the
model's request queue: a busy service is still ready."""

from __future__ import annotations

from ray import serve

DOWN = {"DEPLOY_FAILED", "DELETING", "NOT_STARTED"}


def readiness(app_name: str, deployment: str) -> tuple[bool, str]:
    """(ready, reason): the application exists and is not failing, and ``deployment`` has a RUNNING replica
    (Serve marks a replica RUNNING only after its constructor, i.e. model load and warm-up, returned)."""
    try:
        app = serve.status().applications.get(app_name)
    except Exception as exc:  # noqa: BLE001 - the controller unreachable: not ready, whatever the reason
        return False, f"serve controller: {type(exc).__name__}"
    if app is None:
        return False, f"no application {app_name!r}"
    status = str(getattr(app.status, "value", app.status))
    dep = app.deployments.get(deployment)
    running = int({str(getattr(k, "value", k)): v for k, v in (dep.replica_states if dep else {}).items()}
                  .get("RUNNING", 0))
    if status in DOWN:
        return False, f"application {status}"
    if not running:
        return False, f"no {deployment} replica running (application {status})"
    return True, ""
