"""Score every pair of a shard: one row of statistics per pair, written as ``scores-<key>/NNNNN.parquet``.

A shard is scored when its object exists (an atomic write), so an interrupted curation resumes like a build.
The models sit behind :class:`Scorer` (CLIP, CLIP-IQA, a face model): tests inject a face embedder, and the
flow's Ray actors hold one each. A pair whose image does not decode, or whose bytes do not match the shard's
sha256, is a row with ``corrupt`` set and no other statistic.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from facelift.dataset import Dataset, read_parquet_bytes, shard_key, table_to_parquet_bytes
from facelift.models.metrics import model_identity
from facelift.tasks.curate.config import CurateConfig

log = logging.getLogger(__name__)

CURATION_DIR = "curation"
READ = ["pair_id", "prompt", "worker", "schnell_image", "dev_image", "schnell_sha256", "dev_sha256"]
SCORES_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("shard", pa.int32()), ("worker", pa.string()), ("corrupt", pa.string()),
    ("bytes_equal", pa.bool_()), ("mean_abs_diff", pa.float32()), ("clip_image", pa.float32()),
    ("clip_text_schnell", pa.float32()), ("clip_text_dev", pa.float32()), ("faces_schnell", pa.int32()),
    ("faces_dev", pa.int32()), ("identity", pa.float32()), ("iqa_schnell", pa.float32()),
    ("iqa_dev", pa.float32()), ("phash", pa.string()), ("clip_embedding", pa.binary()),
])


class FaceModel(Protocol):
    """Faces of an RGB uint8 image: how many, and the unit-norm embedding of the largest (None if none)."""

    name: str

    def __call__(self, rgb: np.ndarray) -> tuple[int, np.ndarray | None]: ...


class DeepFaceFaces:
    """DeepFace: one detector pass counts the faces and aligns the largest, which ArcFace then embeds.

    ``embedder`` (tests) replaces ArcFace on the aligned face (RGB uint8 -> vector); detector ``skip`` takes the
    whole image as the one face."""

    def __init__(self, detector: str, embedder: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        from facelift.models.deepface_weights import check_weights

        check_weights(models=() if embedder else ("arcface",), detector=detector)
        self.detector, self.embedder = detector, embedder
        self.name = f"{'custom' if embedder else 'ArcFace'}+{detector}"

    def __call__(self, rgb: np.ndarray) -> tuple[int, np.ndarray | None]:
        from facelift.models.deepface_weights import import_deepface

        deepface = import_deepface()
        if self.detector == "skip":
            count, face = 1, rgb
        else:
            # enforce_detection=False hands back the whole image with confidence 0 when there is no face
            found = deepface.extract_faces(np.ascontiguousarray(rgb[:, :, ::-1]), detector_backend=self.detector,
                                           enforce_detection=False, align=True)
            faces = [f for f in found if float(f.get("confidence") or 0) > 0]
            if not faces:
                return 0, None  # no ArcFace pass on a faceless picture
            largest = max(faces, key=lambda f: f["facial_area"]["w"] * f["facial_area"]["h"])
            count, face = len(faces), (np.asarray(largest["face"]) * 255).clip(0, 255).astype(np.uint8)
        if self.embedder is not None:
            emb = np.asarray(self.embedder(face), dtype=np.float32)
        else:
            rep = deepface.represent(np.ascontiguousarray(face[:, :, ::-1]), model_name="ArcFace",
                                     detector_backend="skip", enforce_detection=False)
            emb = np.asarray(rep[0]["embedding"], dtype=np.float32)
        return count, emb / max(float(np.linalg.norm(emb)), 1e-12)


def score_models(cfg: CurateConfig, faces: str | None = None) -> dict[str, str]:
    """What made the scores (the scores key hashes it): each model's name and weights, and the hash."""
    return {"clip": model_identity(cfg.clip_model), "iqa": model_identity(cfg.iqa_model),
            "faces": faces or f"ArcFace+{cfg.detector}", "phash": "imagehash.phash(hash_size=8)"}


class Scorer:
    """The models curation scores with, loaded once per process (or Ray actor)."""

    def __init__(self, cfg: CurateConfig, faces: FaceModel | None = None, device: str = "cpu") -> None:
        from facelift.models.metrics import ClipIQA

        self.device = device
        self.clip = ClipIQA.from_pretrained(cfg.clip_model).to(device)
        self.iqa = self.clip if cfg.iqa_model == cfg.clip_model else ClipIQA.from_pretrained(cfg.iqa_model).to(device)
        self.faces = faces or DeepFaceFaces(cfg.detector)
        self.batch_size = cfg.batch_size
        self.models = score_models(cfg, self.faces.name)

    def clip_and_iqa(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(unit CLIP embeddings, CLIP-IQA scores) of RGB uint8 images, in batches."""
        import torch

        embs, iqas = [], []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.stack([torch.tensor(im).permute(2, 0, 1) for im in images[i:i + self.batch_size]])
                x = x.to(self.device).float().div(127.5).sub(1)
                embs.append(self.clip.image_embeddings(x).cpu().numpy())
                iqas.append(self.iqa(x).cpu().numpy())
        return np.concatenate(embs), np.concatenate(iqas)

    def texts(self, prompts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return np.concatenate([self.clip.text_embeddings(prompts[i:i + self.batch_size]).cpu().numpy()
                                   for i in range(0, len(prompts), self.batch_size)])


def _decode(cell: dict[str, Any] | None, sha: str | None) -> np.ndarray:
    """RGB uint8 of an image cell; ValueError naming what is wrong."""
    from PIL import Image

    data = (cell or {}).get("bytes")
    if not data:
        raise ValueError("no image bytes")
    if sha and hashlib.sha256(data).hexdigest() != sha:
        raise ValueError("sha256 does not match the shard's provenance")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any decoder error means a corrupt image
        raise ValueError(f"does not decode ({type(exc).__name__}: {exc})") from None


def phash(rgb: np.ndarray) -> str:
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(rgb)))


def scores_prefix(key: str) -> str:
    return f"{CURATION_DIR}/scores-{key}"


def shard_version(ds: Dataset, shard: int) -> str:
    """A short hash of the shard object's version tag: scores name the shard version they were computed from, so
    a shard rewritten by a rebuild at the same URI is scored again."""
    return hashlib.sha256(ds.store.tag(shard_key(shard)).encode()).hexdigest()[:10]


def scores_object(key: str, shard: int, version: str) -> str:
    return f"{scores_prefix(key)}/{shard:05d}-{version}.parquet"


def unscored(ds: Dataset, key: str, shards: list[int]) -> dict[int, str]:
    """The shards (and their versions) with no scores for their current version."""
    versions = {s: shard_version(ds, s) for s in shards}
    return {s: v for s, v in versions.items() if not ds.store.exists(scores_object(key, s, v))}


@dataclass(frozen=True)
class ShardScores:
    shard: int
    pairs: int
    corrupt: int
    seconds: float
    skipped: bool = False


def score_rows(table: pa.Table, shard: int, scorer: Scorer) -> list[dict[str, Any]]:
    """One row of statistics per pair of a shard table (the ``READ`` columns)."""
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    rows, good = [], []  # good: (row index, schnell rgb, dev rgb)
    for i, pair_id in enumerate(cols["pair_id"]):
        row: dict[str, Any] = {f.name: None for f in SCORES_SCHEMA}
        row.update(pair_id=pair_id, shard=shard, worker=cols["worker"][i])
        try:
            a = _decode(cols["schnell_image"][i], cols["schnell_sha256"][i])
            b = _decode(cols["dev_image"][i], cols["dev_sha256"][i])
        except ValueError as exc:
            row["corrupt"] = str(exc)
        else:
            row["bytes_equal"] = cols["schnell_image"][i]["bytes"] == cols["dev_image"][i]["bytes"]
            row["mean_abs_diff"] = (float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
                                    if a.shape == b.shape else float("nan"))
            row["phash"] = phash(a)
            good.append((i, a, b))
        rows.append(row)
    if good:
        emb, iqa = scorer.clip_and_iqa([a for _, a, _ in good] + [b for _, _, b in good])
        text = scorer.texts([cols["prompt"][i] for i, _, _ in good])
        n = len(good)
        for k, (i, a, b) in enumerate(good):
            ea, eb = emb[k], emb[n + k]
            fa, va = scorer.faces(a)
            fb, vb = scorer.faces(b)
            rows[i].update(
                clip_image=float(ea @ eb), clip_text_schnell=float(ea @ text[k]), clip_text_dev=float(eb @ text[k]),
                iqa_schnell=float(iqa[k]), iqa_dev=float(iqa[n + k]), faces_schnell=fa, faces_dev=fb,
                identity=float(va @ vb) if va is not None and vb is not None else None,
                clip_embedding=ea.astype(np.float16).tobytes())
    return rows


def score_shard(ds: Dataset, shard: int, key: str, scorer: Scorer, version: str | None = None) -> ShardScores:
    """Score one shard and commit its scores object (skipped when it exists for this version of the shard;
    ``version``: :func:`shard_version`, when the caller has it already)."""
    version = version or shard_version(ds, shard)
    if ds.store.exists(scores_object(key, shard, version)):
        return ShardScores(shard, 0, 0, 0.0, skipped=True)
    start = time.perf_counter()
    rows = score_rows(ds.read_shard(shard, READ), shard, scorer)
    table = pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)
    ds.store.write_bytes(scores_object(key, shard, version), table_to_parquet_bytes(table))
    res = ShardScores(shard, len(rows), sum(r["corrupt"] is not None for r in rows), time.perf_counter() - start)
    log.info("curation scores of shard %05d (%s): %d pairs, %d corrupt, %.1fs", shard, ds.dataset_id, res.pairs,
             res.corrupt, res.seconds)
    return res


def load_scores(ds: Dataset, key: str, shards: list[int]) -> pa.Table:
    """Every shard's scores (the flow scores them first); a missing object is an error naming it."""
    tables = []
    for shard in shards:
        name = scores_object(key, shard, shard_version(ds, shard))
        try:
            tables.append(read_parquet_bytes(ds.store.read_bytes(name)))
        except FileNotFoundError:
            raise FileNotFoundError(f"no curation scores for this version of shard {shard:05d} at "
                                    f"{ds.store.url(name)}: score it first") from None
    return pa.concat_tables(tables) if tables else SCORES_SCHEMA.empty_table()
