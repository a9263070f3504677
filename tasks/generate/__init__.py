"""Generate stage: a portrait from a prompt with FLUX.1-schnell, then a trained head (the method's payoff).

Reads a head (a head folder or a run URI ``<root>/runs/<id>``) and the schnell weights of a profile (``tiny``
builds random tiny ones offline; ``flux`` resolves the pinned hub snapshot); writes PNGs whose text chunks carry
their provenance (prompt, seed, model ids and revisions, the head's run id). Open :mod:`.pipeline` first
(:class:`Generator`, loaded once and called per batch, also used by the Ray Serve application).
"""

from facelift.tasks.generate.pipeline import (
    PROVENANCE_KEY,
    Generated,
    GenerateOptions,
    Generator,
    head_run_id,
    png_bytes,
    read_prompts,
    read_provenance,
    run_generate,
    write_generated,
)

__all__ = ["PROVENANCE_KEY", "Generated", "GenerateOptions", "Generator", "head_run_id", "png_bytes", "read_prompts",
           "read_provenance", "run_generate", "write_generated"]
