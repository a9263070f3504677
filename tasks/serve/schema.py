"""The request body of ``POST /generate`` and ``POST /compare``, validated before a request joins a batch.

Ray Serve sets a batch's exception on every request of the batch, so everything that can be checked per request
is checked here, in the ingress: a prompt with text (by ``str.strip()``, the generator's own test), a length cap,
the seed range, the output options, and no unknown field. A refusal is a 422 whose body names the fields and
never echoes the input (a 10 MB body gives a short answer).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_PROMPT_CHARS = 1000
MAX_BODY_BYTES = 64 * 1024  # a request body past this is refused (413) without being read whole
MAX_OUTPUTS = 4
SEED_LIMIT = 2**63 - MAX_OUTPUTS  # seed + i (i < num_outputs) stays a valid int64 seed
RANDOM_SEED_LIMIT = 2**32
MAX_ERRORS, MAX_MESSAGE_CHARS = 8, 200
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}


class GenerateRequest(BaseModel):
    """Replicate-style: ``prompt``, optional ``seed`` (random when absent), ``num_outputs`` 1-4, ``output_format``
    png|webp|jpeg, ``output_quality`` (webp and jpeg). Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="random when absent; output i uses seed + i")
    num_outputs: int = Field(1, ge=1, le=MAX_OUTPUTS)
    output_format: Literal["png", "webp", "jpeg"] = "png"
    output_quality: int = Field(90, ge=1, le=100, description="webp and jpeg quality (png is lossless)")

    @field_validator("prompt")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():  # the generator's own test (it also strips U+001C-U+001F, which `\\S` accepts)
            raise ValueError("prompt must contain text, not only whitespace")
        return value

    def seeds(self) -> list[int]:
        """One seed per output: ``seed + i`` when given, else fresh random ones."""
        if self.seed is not None:
            return [self.seed + i for i in range(self.num_outputs)]
        return [secrets.randbelow(RANDOM_SEED_LIMIT) for _ in range(self.num_outputs)]


class BadRequest(Exception):
    """A request refused before it reaches the model: ``status`` and a short JSON-able ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", ""))
        self.status, self.body = status, body


def capped_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without their ``input`` (or ``ctx``), at most :data:`MAX_ERRORS`, messages capped."""
    return [{"loc": [str(p)[:64] for p in e["loc"]], "type": e["type"], "msg": e["msg"][:MAX_MESSAGE_CHARS]}
            for e in exc.errors(include_url=False)[:MAX_ERRORS]]


async def read_body(request: Any, cap: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, at most ``cap`` bytes: a declared ``Content-Length`` over the cap is refused (413)
    before anything is read, and a streamed body is cut off (413) as soon as it passes the cap."""
    too_big = BadRequest(413, {"error": f"request body over {cap} bytes"})
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > cap:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> GenerateRequest:
    """The validated request of a raw JSON body; :class:`BadRequest` (413 or 422, capped body) otherwise."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, {"error": f"request body over {MAX_BODY_BYTES} bytes"})
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(422, {"error": f"the body is not JSON ({str(exc)[:MAX_MESSAGE_CHARS]})"}) from None
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as exc:
        errors = capped_errors(exc)
        where = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors)
        raise BadRequest(422, {"error": f"invalid request: {where}"[:1000], "detail": errors}) from None
