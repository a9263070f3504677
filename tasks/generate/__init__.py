"""Generate stage: a portrait from a prompt with FLUX.1-schnell, then a trained head (the method's payoff).

Reads a head (a head folder or a run URI ``<root>/runs/<id>``) and the schnell weights of a profile (``tiny``
builds random tiny ones offline; ``flux`` resolves the pinned hub snapshot); writes PNGs whose metadata carries
their provenance (a ``facelift`` JSON chunk, A1111 ``parameters``, XMP with IPTC DigitalSourceType). Open
:mod:`.pipeline` first (:class:`Generator`, loaded once and called per batch, also used by the Ray Serve
application), then :mod:`.runner` (``facelift generate``: streamed, resumable, ``manifest.jsonl``) and
:mod:`.provenance` (snapshot commit, weight hashes, the A1111 text).
"""

from facelift.tasks.generate.pipeline import (
    PROVENANCE_KEY,
    Generated,
    GenerateOptions,
    Generator,
    head_run_id,
    png_bytes,
    provenance_params,
    read_prompts,
    read_provenance,
)
from facelift.tasks.generate.runner import MANIFEST, run_generate, slug

__all__ = ["MANIFEST", "PROVENANCE_KEY", "Generated", "GenerateOptions", "Generator", "head_run_id", "png_bytes",
           "provenance_params", "read_prompts", "read_provenance", "run_generate", "slug"]
