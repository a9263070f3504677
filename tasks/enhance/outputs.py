"""What goes where under ``DST``: output names, reruns (``enhance-manifest.jsonl``) and the outputs' provenance.

- :func:`target_key`: the output name of a source (same relative name; with ``--format``, a source in another
  format gets the suffix appended, so ``a.jpg`` and ``a.png`` never share an output); names escaping ``DST``
  are refused.
- :func:`plan_jobs`: (source, output) pairs; duplicate output names are refused, sources inside ``DST`` (a glob
  can match the outputs) are left out.
- :func:`skip_done`: the rerun key is (output name, the head's weights sha256): this head's existing outputs are
  skipped, another head's are refused (``overwrite`` redoes them).
- :func:`output_metadata`: the input's provenance plus the enhance head, as ``PIL.Image.save`` arguments.
Only torch and the standard library are imported at module import time.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from facelift.tasks.enhance.images import FORMATS, Decoded, output_format

ESCAPE = "refused: the name escapes the destination"
MANIFEST = "enhance-manifest.jsonl"  # one record per output: its key, source and the head's weights sha256


@dataclass
class EnhanceReport:
    """What an enhance run did: counts, per-file failures and skips (path, reason), throughput, outputs."""

    processed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    existing: int = 0
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    engine: dict[str, Any] = field(default_factory=dict)
    peak_held_pixels: int = 0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "failed": [{"path": p, "error": e} for p, e in self.failed],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "existing": self.existing,
                "notes": self.notes, "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
                "engine": self.engine, "outputs": len(self.outputs), "peak_held_pixels": self.peak_held_pixels}


def target_key(uri: str, base: str, out_format: str | None) -> str:
    """The output key of ``uri`` relative to ``base``; ValueError if the name would leave the destination.

    With ``out_format``, a source already in that format keeps its name; any other gets the suffix appended
    (``a.jpg`` -> ``a.jpg.png``), so that ``a.jpg`` and ``a.png`` never map to one output."""
    path, root = uri.split("://", 1)[-1], base.split("://", 1)[-1].rstrip("/")
    if not path.startswith(root + "/"):
        raise ValueError(ESCAPE)
    rel = path[len(root) + 1:]
    if any(part in ("", ".", "..") for part in rel.split("/")):  # '..' in an object name, or '//'
        raise ValueError(ESCAPE)
    if not out_format or FORMATS.get(posixpath.splitext(rel)[1].lower()) == output_format(out_format):
        return rel
    return rel + out_format  # a.jpg -> a.jpg.png: never the name of a.png's output


def _norm(uri: str) -> str:
    path = posixpath.normpath(uri.split("://", 1)[-1])
    return path if "://" not in uri else path.lstrip("/")  # object stores: "/b/k" and "b/k" are one key


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def under(uri: str, folder: str) -> bool:
    """Whether ``uri`` lies inside ``folder`` (same protocol, normalised paths)."""
    return _protocol(uri) == _protocol(folder) and _norm(uri).startswith(_norm(folder) + "/")


def check_destination(src: str, base: str, src_is_dir: bool, dst_url: str) -> None:
    """Refuse a destination that would overwrite the originals (dst == the source folder) or sit inside it."""
    src_root, dst_root = _norm(base), _norm(dst_url)
    if _protocol(base) != _protocol(dst_url):
        return
    if dst_root == src_root:
        raise ValueError(f"destination {dst_url} is the source folder of {src}: the outputs would overwrite the "
                         f"originals; choose another destination")
    if src_is_dir and dst_root.startswith(src_root + "/"):
        raise ValueError(f"destination {dst_url} is inside the source folder {base}: a rerun would enhance the "
                         f"outputs again; choose a destination outside it")


def existing_keys(out: Any) -> set[str]:
    """Keys already under the destination (listed once, not one request per file)."""
    fs = out.fs
    root = fs._strip_protocol(out.root).rstrip("/") + "/"
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return set()
    return {p[len(root):] for p in found if p.startswith(root)}


def output_metadata(fmt: str, image: Decoded, head: dict[str, Any] | None) -> dict[str, Any] | None:
    """``PIL.Image.save`` arguments carrying the input's provenance plus this head's (None when there is none)."""
    if head is None and image.provenance is None:
        return None
    from facelift.tasks.enhance.metadata import COMPOSITE, TRAINED, enhance_parameters, save_params

    provenance = dict(image.provenance or {})
    if head is not None:
        provenance["enhance"] = head
    generated = image.provenance is not None or image.parameters is not None
    parameters = enhance_parameters(image.parameters, (head or {}).get("head", ""),
                                    (head or {}).get("head_sha256", ""))
    return save_params(fmt, provenance, parameters, TRAINED if generated else COMPOSITE)


def plan_jobs(sources: list[str], base: str, out_format: str | None, dst: str, report: EnhanceReport
              ) -> list[tuple[str, str]]:
    """(source, output key) per source; names escaping ``dst`` and duplicate output names are recorded as failed,
    sources inside ``dst`` (a glob can match the outputs) are left out."""
    jobs: list[tuple[str, str]] = []
    owner: dict[str, str] = {}
    inside = 0
    for uri in sources:
        if under(uri, dst):
            inside += 1
            continue
        try:
            key = target_key(uri, base, out_format)
        except ValueError as exc:
            report.failed.append((uri, str(exc)))
            continue
        if key in owner:
            report.failed.append((uri, f"refused: its output name {key} is already that of {owner[key]}"))
            continue
        owner[key] = uri
        jobs.append((uri, key))
    if inside:
        report.notes.append(f"{inside} file(s) under the destination {dst} matched the source and were left out")
    return jobs


def skip_done(jobs: list[tuple[str, str]], out: Any, manifest: Any, head_hash: str, report: EnhanceReport
              ) -> list[tuple[str, str]]:
    """Jobs whose output is missing. An existing output is skipped only if it was made by this head (its
    ``enhance-manifest.jsonl`` record, else its own provenance); any other is refused (ValueError)."""
    done = existing_keys(out)
    recorded = {r.get("key"): r.get("head_sha256") for r in manifest.records()}
    todo, foreign = [], []
    for uri, key in jobs:
        if key not in done:
            todo.append((uri, key))
            continue
        made_by = recorded.get(key)
        if made_by is None:  # not recorded (e.g. a run killed before its manifest reached an object store)
            made_by = _head_of_output(out, key)
            if made_by == head_hash:
                manifest.append({"key": key, "source": uri, "head_sha256": head_hash})
        if made_by == head_hash:
            report.existing += 1
        else:
            foreign.append(key)
    if foreign:
        raise ValueError(f"{len(foreign)} output(s) in {out.url()} were made by another head or are not recorded "
                         f"as this head's (e.g. {', '.join(foreign[:3])}): pass --overwrite to redo them with this "
                         f"head, or choose another destination")
    return todo


def _head_of_output(out: Any, key: str) -> str | None:
    import io

    from PIL import Image

    from facelift.tasks.enhance.metadata import read_metadata

    try:
        with Image.open(io.BytesIO(out.read_bytes(key))) as img:
            enhance = read_metadata(img)[0].get("enhance")
    except Exception:  # noqa: BLE001 - unreadable: not this head's output
        return None
    return enhance.get("head_sha256") if isinstance(enhance, dict) else None
