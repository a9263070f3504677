"""Audit stage: dataset diversity with DeepFace (age, gender, race) and ArcFace embeddings + t-SNE.

Reads ``datasets/<id>`` shards; writes ``datasets/<id>/audit/<detector>/`` (one object per shard, resumable) and
``runs/<run_id>/`` (Table 1, report, t-SNE plots). Open :mod:`.analyze` first (per-image analysis, per-shard
results); then :mod:`.report` (Table 1), :mod:`.tsne`, :mod:`.outputs`, and :mod:`.rebalance` (per-name weights
that move the next build toward a target distribution).
"""

from facelift.tasks.audit.analyze import (
    AuditError,
    AuditOptions,
    ShardAudit,
    audit_prefix,
    audit_shard,
    load_audit,
    prepare_audit,
    summary_dict,
)
from facelift.tasks.audit.outputs import write_outputs
from facelift.tasks.audit.rebalance import RebalanceError, compute_weights, load_target, parse_target, write_weights
from facelift.tasks.audit.report import to_markdown

__all__ = ["AuditError", "AuditOptions", "RebalanceError", "ShardAudit", "audit_prefix", "audit_shard",
           "compute_weights", "load_audit", "load_target", "parse_target", "prepare_audit", "summary_dict",
           "to_markdown", "write_outputs", "write_weights"]
