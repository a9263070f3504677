"""A Prefect progress artifact updated from its own thread, so a slow API never stalls the work it reports on."""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class ProgressArtifact:
    """``with ProgressArtifact(done, total, "what") as p: ... p.value = n`` -- the artifact shows ``value/total``.

    Setting ``value`` costs an attribute write; a daemon thread sends it to the Prefect API at most once every
    ``every_s`` seconds when it changed, and once more on exit. A failing API call is logged, never raised."""

    def __init__(self, done: int, total: int, description: str, every_s: float = 1.0):
        self.value, self.total, self.description, self.every_s = done, max(total, 1), description, every_s
        self._sent: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._id: Any = None

    def _percent(self) -> float:
        return 100.0 * self.value / self.total

    def _send(self) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        value = self.value
        if value == self._sent:
            return
        try:
            if self._id is None:
                self._id = create_progress_artifact(progress=self._percent(), description=self.description)
            else:
                update_progress_artifact(self._id, 100.0 * value / self.total)
            self._sent = value
        except Exception as exc:  # noqa: BLE001 - progress is advisory; the work goes on
            log.warning("could not update the progress artifact: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._send()

    def __enter__(self) -> ProgressArtifact:
        self._send()  # created from the flow's own thread and context
        context = contextvars.copy_context()  # the thread talks to the same API, as the same flow run
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="progress-artifact",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._send()
