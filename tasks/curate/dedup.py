"""Near-duplicate clusters across the whole dataset, from the stored pHashes and CLIP embeddings.

Two pairs are near-duplicates when their schnell pHashes differ in at most ``phash_max`` bits or their CLIP
image embeddings have cosine at least ``dup_clip_min``; clusters are the connected components. Each cluster
keeps one pair, preferring test, then val, then train (then the smaller pair id), so the training split never
holds a near-copy of a test pair. The comparisons run in blocks (bounded memory at a million pairs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_RANK = {"test": 0, "val": 1, "train": 2}


def _phash_bits(hexes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) if isinstance(h, str) else 0 for h in hexes], dtype=np.uint64)


def _embeddings(cells: pd.Series) -> np.ndarray:
    rows = [np.frombuffer(c, dtype=np.float16).astype(np.float32) if c else None for c in cells]
    dim = next((len(r) for r in rows if r is not None), 0)
    return np.stack([r if r is not None else np.zeros(dim, np.float32) for r in rows]) if dim else np.zeros((0, 0))


def _edges(valid: np.ndarray, bits: np.ndarray, emb: np.ndarray, phash_max: int, clip_min: float | None,
           block: int) -> list[tuple[int, int]]:
    idx = np.flatnonzero(valid)
    bits, emb = bits[idx], emb[idx] if emb.size else emb
    edges = []
    for start in range(0, len(idx), block):
        stop = min(start + block, len(idx))
        near = np.bitwise_count(bits[start:stop, None] ^ bits[None, :]) <= phash_max
        if clip_min is not None and emb.size:
            near |= (emb[start:stop] @ emb.T) >= clip_min
        rows, cols = np.nonzero(near)
        rows += start
        keep = cols > rows  # each edge once, no self loops
        edges += list(zip(idx[rows[keep]].tolist(), idx[cols[keep]].tolist(), strict=True))
    return edges


def _components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def near_duplicates(scores: pd.DataFrame, phash_max: int, clip_min: float | None, block: int = 512) -> pd.DataFrame:
    """The duplicate clusters: one row per pair in a cluster of two or more (``cluster``, ``pair_id``,
    ``split``, ``kept``). ``scores`` needs ``pair_id``, ``split``, ``phash``, ``clip_embedding``; corrupt pairs
    (no pHash) take no part; ``clip_min`` None: pHash alone."""
    cols = ["cluster", "pair_id", "split", "kept"]
    if scores.empty:
        return pd.DataFrame(columns=cols)
    valid = scores["phash"].notna().to_numpy()
    edges = _edges(valid, _phash_bits(scores["phash"]), _embeddings(scores["clip_embedding"]),
                   phash_max, clip_min, block)
    if not edges:
        return pd.DataFrame(columns=cols)
    root = _components(len(scores), edges)
    members = np.unique(np.array(edges).ravel())
    out = pd.DataFrame({"cluster": root[members], "pair_id": scores["pair_id"].to_numpy()[members],
                        "split": scores["split"].to_numpy()[members]})
    out["rank"] = out["split"].map(SPLIT_RANK).fillna(3)
    out = out.sort_values(["cluster", "rank", "pair_id"]).reset_index(drop=True)
    out["kept"] = ~out.duplicated("cluster")
    out["cluster"] = pd.factorize(out["cluster"])[0]
    return out[cols]
