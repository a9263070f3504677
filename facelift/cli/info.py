"""Human-readable dataset summaries for ``facelift info``."""

from __future__ import annotations

from facelift.dataset import Dataset, DatasetError
from facelift.storage import Store


def describe(ds: Dataset) -> str:
    info = ds.info()
    cfg = info.get("config", {})
    gen, plan = cfg.get("generation", {}), cfg.get("plan", {})
    counts, timings = info.get("counts", {}), info.get("timings", {})
    committed = ds.committed_shards()
    lines = [
        f"dataset   {info.get('dataset_id')}  ({info.get('status')})",
        f"uri       {ds.uri}",
        f"created   {info.get('created')}   completed {info.get('completed', '-')}",
        f"profile   {cfg.get('profile')}   prompt mode {plan.get('prompt', {}).get('mode')}",
        f"pairs     {counts.get('pairs', '-')} of {counts.get('planned')} planned;"
        f" shards committed {len(committed)} of {counts.get('shards_planned', counts.get('shards'))}",
    ]
    if gen:
        s, d = gen.get("schnell", {}), gen.get("dev", {})
        lines += [
            f"schnell   {s.get('model')}@{s.get('revision') or 'main'}: {s.get('steps')} steps, "
            f"guidance {s.get('guidance')}",
            f"dev       {d.get('model')}@{d.get('revision') or 'main'}: {d.get('steps')} steps, "
            f"guidance {d.get('guidance')}, strength {d.get('strength')}",
            f"size      {gen.get('width')}x{gen.get('height')} {gen.get('dtype')}",
        ]
    per_pair = timings.get("worker_seconds_per_pair")
    if per_pair:
        lines.append("per pair  " + ", ".join(f"{k} {v:.4f}" for k, v in per_pair.items()))
    cost = info.get("cost")
    if cost:
        proj = cost["projection"]
        lines.append(f"cost      {cost['gpu_seconds_per_pair']['total']:.4f} GPU-s/pair; {proj['pairs']} pairs = "
                     f"{proj['gpu_hours']} GPU-hours")
    names = info.get("names")
    if names:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(names.get("dropped", {}).items())) or "none"
        lines.append(f"names     {names.get('kept')} kept of {names.get('rows')} rows; dropped: {drops}")
    return "\n".join(lines)


def list_datasets(root: Store) -> str:
    ids = root.list("datasets")
    if not ids:
        raise DatasetError(f"no dataset.json and no datasets/ under {root.where()}")
    rows = []
    for dataset_id in ids:
        try:
            info = Dataset.at(root, dataset_id).info()
        except DatasetError:
            continue
        rows.append(f"{dataset_id}\t{info.get('status')}\t{info.get('counts', {}).get('pairs', '-')} pairs")
    return "\n".join(rows)
