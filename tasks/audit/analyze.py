"""Per-image diversity audit: DeepFace age/gender/race and ArcFace embeddings, shard by shard.

Results live beside the dataset, one object per dataset shard, joinable on ``pair_id``::

    <dataset>/audit/<detector>/audit.json        options of this audit (checked on resume)
    <dataset>/audit/<detector>/NNNNN.parquet     one row per (pair_id, image) of shard NNNNN

A shard's audit is committed when its object exists (atomic write), so an interrupted audit resumes
where it stopped, and auditing the dev images later (``include_dev``) extends each shard in place.
An image where the detector finds no face is a row with ``face_detected = False``; a corrupt image is a
row with ``error`` set. Neither stops the audit. DeepFace/TensorFlow are imported lazily.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from facelift.dataset import Dataset, decode_image, read_parquet_bytes, table_to_parquet_bytes

log = logging.getLogger(__name__)

RACES: tuple[str, ...] = ("asian", "black", "indian", "latino hispanic", "middle eastern", "white")
GENDERS: tuple[str, ...] = ("Man", "Woman")
IMAGE_COLUMNS: dict[str, str] = {"schnell": "schnell_image", "dev": "dev_image"}
AUDIT_DIR = "audit"
AUDIT_JSON = "audit.json"
EMBED_MODEL = "ArcFace"
EMBED_DIM = 512
KEY_COLUMNS = ["pair_id", "nconst", "name", "prompt"]
_AUDIT_SHARD_RE = re.compile(r"^(\d{5,})\.parquet$")


def race_column(race: str) -> str:
    return "race_" + race.replace(" ", "_")


AUDIT_SCHEMA = pa.schema(
    [("pair_id", pa.string()), ("nconst", pa.string()), ("name", pa.string()), ("prompt", pa.string()),
     ("shard", pa.int32()), ("image", pa.string()), ("face_detected", pa.bool_()), ("n_faces", pa.int32()),
     ("error", pa.string()), ("age", pa.float32()), ("gender", pa.string()), ("gender_man", pa.float32()),
     ("gender_woman", pa.float32()), ("dominant_race", pa.string())]
    + [(race_column(r), pa.float32()) for r in RACES]
    + [("face_confidence", pa.float32()), ("face_x", pa.int32()), ("face_y", pa.int32()),
       ("face_w", pa.int32()), ("face_h", pa.int32()), ("embedding", pa.list_(pa.float32())),
       ("detector", pa.string()), ("seconds", pa.float32())]
)


class AuditError(RuntimeError):
    """An audit cannot run or resume (bad options, mismatching earlier audit, unreadable results)."""


@dataclass(frozen=True)
class AuditOptions:
    """What an audit computes. ``detector="skip"`` analyses the whole image as one face."""

    detector: str = "opencv"
    include_dev: bool = False
    enforce_detection: bool = True
    align: bool = True

    @property
    def images(self) -> tuple[str, ...]:
        return ("schnell", "dev") if self.include_dev else ("schnell",)

    def identity(self) -> dict[str, Any]:
        """The options that change per-image results (must match when an audit resumes)."""
        return {"detector": self.detector, "enforce_detection": self.enforce_detection, "align": self.align,
                "embed_model": EMBED_MODEL}


@dataclass(frozen=True)
class ShardAudit:
    shard: int
    images: int  # rows added by this call
    faces: int
    no_face: int
    errors: int
    seconds: float
    skipped: bool


def audit_prefix(detector: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", detector):
        raise AuditError(f"invalid detector name {detector!r}")
    return f"{AUDIT_DIR}/{detector}"


def audit_key(detector: str, shard: int) -> str:
    return f"{audit_prefix(detector)}/{shard:05d}.parquet"


def audited_shards(ds: Dataset, detector: str) -> list[int]:
    return sorted(int(m.group(1)) for n in ds.store.list(audit_prefix(detector))
                  if (m := _AUDIT_SHARD_RE.match(n)))


def prepare_audit(ds: Dataset, opts: AuditOptions) -> None:
    """Record the audit's options, or check they match those of the audit being resumed."""
    key = f"{audit_prefix(opts.detector)}/{AUDIT_JSON}"
    if ds.store.exists(key):
        prior = json.loads(ds.store.read_bytes(key))
        if prior.get("identity") != opts.identity():
            raise AuditError(
                f"{ds.store.url(key)} was made with {prior.get('identity')}, not {opts.identity()}: "
                f"delete {ds.store.url(audit_prefix(opts.detector))} to redo it with the new options"
            )
        return
    from importlib.metadata import version

    meta = {"identity": opts.identity(), "deepface": version("deepface"), "races": list(RACES),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ds.store.write_bytes(key, json.dumps(meta, indent=2).encode())


def _largest(faces: list[dict[str, Any]], area_key: str) -> dict[str, Any]:
    def area(face: dict[str, Any]) -> int:
        region = face.get(area_key) or {}
        return int(region.get("w", 0)) * int(region.get("h", 0))

    return max(faces, key=area)


def empty_result(error: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {f.name: None for f in AUDIT_SCHEMA if f.name not in KEY_COLUMNS}
    out.update(face_detected=False, n_faces=0, error=error)
    return out


def analyze_image(bgr: np.ndarray, opts: AuditOptions) -> dict[str, Any]:
    """Run ``DeepFace.analyze`` (age, gender, race) and ``DeepFace.represent`` (ArcFace) on one image.

    Several faces: the largest is kept and ``n_faces`` says how many there were. No face: a result with
    ``face_detected=False`` (never an exception).
    """
    from facelift.models.deepface_weights import import_deepface

    deepface = import_deepface()
    from deepface.modules.exceptions import FaceNotDetected

    common = {"detector_backend": opts.detector, "enforce_detection": opts.enforce_detection,
              "align": opts.align}
    try:
        faces = deepface.analyze(bgr, actions=("age", "gender", "race"), silent=True, **common)
    except FaceNotDetected:
        return empty_result()
    if not faces:
        return empty_result()
    face = _largest(faces, "region")
    confidence = float(face.get("face_confidence") or 0.0)
    out = empty_result()
    region = face.get("region") or {}
    out.update(
        # With enforce_detection=False DeepFace hands back the whole image (confidence 0) when it finds
        # no face: that still counts as a detection failure. "skip" analyses the whole image by design.
        face_detected=opts.detector == "skip" or confidence > 0, n_faces=len(faces),
        age=float(face["age"]), gender=str(face["dominant_gender"]),
        gender_man=float(face["gender"]["Man"]), gender_woman=float(face["gender"]["Woman"]),
        dominant_race=str(face["dominant_race"]), face_confidence=confidence,
        face_x=int(region.get("x", 0)), face_y=int(region.get("y", 0)),
        face_w=int(region.get("w", 0)), face_h=int(region.get("h", 0)),
    )
    for race in RACES:
        out[race_column(race)] = float(face["race"][race])
    try:
        reps = deepface.represent(bgr, model_name=EMBED_MODEL, **common)
    except FaceNotDetected:  # analyze found a face that represent's pass did not: keep the attributes
        reps = []
    if reps:
        rep = _largest(reps, "facial_area")
        out["embedding"] = np.asarray(rep["embedding"], dtype=np.float32).tolist()
    return out


def audit_rows(table: pa.Table, shard: int, image: str, opts: AuditOptions) -> list[dict[str, Any]]:
    """Per-image results for one image kind of a shard table (key columns + the image column)."""
    rows = []
    keys = {c: table.column(c).to_pylist() for c in KEY_COLUMNS}
    cells = table.column(IMAGE_COLUMNS[image]).to_pylist()
    for i, cell in enumerate(cells):
        start = time.perf_counter()
        try:
            rgb = np.asarray(decode_image(cell))
        except ValueError as exc:
            result = empty_result(error=str(exc))
        else:
            result = analyze_image(np.ascontiguousarray(rgb[:, :, ::-1]), opts)
        result.update({c: keys[c][i] for c in KEY_COLUMNS})
        result.update(shard=shard, image=image, detector=opts.detector,
                      seconds=time.perf_counter() - start)
        rows.append(result)
    return rows


def read_audit_shard(ds: Dataset, detector: str, shard: int) -> pa.Table | None:
    key = audit_key(detector, shard)
    try:
        return read_parquet_bytes(ds.store.read_bytes(key))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - corrupt parquet of any kind
        raise AuditError(f"audit results {ds.store.url(key)} are unreadable ({exc}); delete the object "
                         "and resume to redo that shard") from exc


def audit_shard(ds: Dataset, shard: int, opts: AuditOptions) -> ShardAudit:
    """Audit one dataset shard (the image kinds not audited yet) and commit its results object."""
    start = time.perf_counter()
    existing = read_audit_shard(ds, opts.detector, shard)
    done = set(existing.column("image").to_pylist()) if existing is not None else set()
    todo = [image for image in opts.images if image not in done]
    if not todo:
        return ShardAudit(shard, 0, 0, 0, 0, 0.0, skipped=True)
    table = ds.read_shard(shard, columns=KEY_COLUMNS + [IMAGE_COLUMNS[i] for i in todo])
    rows = [row for image in todo for row in audit_rows(table, shard, image, opts)]
    new = pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)
    merged = new if existing is None else pa.concat_tables([existing.cast(AUDIT_SCHEMA), new])
    ds.store.write_bytes(audit_key(opts.detector, shard), table_to_parquet_bytes(merged))
    faces = sum(bool(r["face_detected"]) for r in rows)
    errors = sum(r["error"] is not None for r in rows)
    res = ShardAudit(shard, len(rows), faces, len(rows) - faces - errors, errors,
                     time.perf_counter() - start, skipped=False)
    log.info("audit shard %05d of %s: %d images, %d faces, %d no face, %d errors, %.1fs", shard,
             ds.dataset_id, res.images, res.faces, res.no_face, res.errors, res.seconds)
    return res


def audit_dataset(ds: Dataset, opts: AuditOptions, shards: list[int] | None = None) -> list[ShardAudit]:
    """Audit every committed shard (or ``shards``); already audited shards are skipped."""
    from facelift.models.deepface_weights import check_weights

    check_weights(detector=opts.detector)
    prepare_audit(ds, opts)
    return [audit_shard(ds, s, opts) for s in (ds.committed_shards() if shards is None else shards)]


def load_audit(ds: Dataset, detector: str, images: tuple[str, ...] = ("schnell",)) -> pd.DataFrame:
    """All per-image results of one audit (only the given image kinds), as one DataFrame."""
    tables = [t for s in audited_shards(ds, detector) if (t := read_audit_shard(ds, detector, s)) is not None]
    if not tables:
        raise AuditError(f"no audit results under {ds.store.url(audit_prefix(detector))}: run the audit first")
    df = pa.concat_tables([t.cast(AUDIT_SCHEMA) for t in tables]).to_pandas()
    return df[df["image"].isin(images)].reset_index(drop=True)


def prompt_mode(ds: Dataset) -> str:
    """``baseline`` or ``enriched``, from the dataset's recorded config."""
    info = ds.info()
    mode = (((info.get("config") or {}).get("plan") or {}).get("prompt") or {}).get("mode")
    return str(mode or info.get("prompt_mode") or "unknown")


def summary_dict(results: list[ShardAudit]) -> dict[str, Any]:
    return {"shards": len(results), "skipped": sum(r.skipped for r in results),
            "images": sum(r.images for r in results), "faces": sum(r.faces for r in results),
            "no_face": sum(r.no_face for r in results), "errors": sum(r.errors for r in results),
            "seconds": round(sum(r.seconds for r in results), 3),
            "per_shard": [asdict(r) for r in results]}
