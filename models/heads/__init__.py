"""Image-to-image heads (schnell -> dev look): an explicit registry, ``build_head`` and ``load_head``.

```
head = build_head("esa_cyclegan", "debug", lambda_cyc=5.0)
losses = head.step({"schnell": x, "dev": y})       # named losses, stateless
head.save("runs/abc/head"); head = load_head("s3://bucket/runs/abc", endpoint_url=...)
```
Only torch is imported at module import time.
"""

from __future__ import annotations

import json
from typing import Any

from facelift.models.heads.base import (
    COMPILE_MODES,
    CONFIG_FILE,
    DEFAULT_COMPILE,
    HEAD_FORMAT,
    WEIGHTS_FILE,
    Head,
    HeadError,
    OptimizerSpec,
    compile_mode,
    config_from_dict,
    train_step,
)
from facelift.models.heads.cyclegan import CycleGANConfig, CycleGANHead
from facelift.models.heads.esa_cyclegan import ESACycleGANConfig, ESACycleGANHead
from facelift.models.heads.unet_cbam import UNetCBAMConfig, UNetCBAMHead

HEADS: dict[str, type[Head]] = {
    "unet_cbam": UNetCBAMHead,
    "cyclegan": CycleGANHead,
    "esa_cyclegan": ESACycleGANHead,
}

__all__ = [
    "HEADS", "Head", "HeadError", "OptimizerSpec", "build_head", "load_head", "head_class", "train_step",
    "UNetCBAMConfig", "CycleGANConfig", "ESACycleGANConfig", "CONFIG_FILE", "WEIGHTS_FILE", "HEAD_FORMAT",
    "COMPILE_MODES", "DEFAULT_COMPILE", "compile_mode",
]


def head_class(name: str) -> type[Head]:
    try:
        return HEADS[name]
    except KeyError:
        raise HeadError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}") from None


def build_head(name: str, flavor: str = "full", **overrides: Any) -> Head:
    """A fresh head from the registry; ``overrides`` replace fields of the flavor's config."""
    return head_class(name).build(flavor, **overrides)


def read_head_config(folder_or_uri: str, endpoint_url: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(store of the head folder, parsed config.json). Accepts a head folder or a run folder with head/."""
    from facelift.storage import Store

    store = Store(str(folder_or_uri), endpoint_url)
    for candidate in (store, store.child("head")):
        try:
            raw = candidate.read_bytes(CONFIG_FILE)
        except FileNotFoundError:
            continue
        try:
            info = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HeadError(f"corrupt {CONFIG_FILE} in {candidate.where()}: {exc}") from None
        if not isinstance(info, dict) or info.get("format") != HEAD_FORMAT:
            raise HeadError(f"{candidate.where()}/{CONFIG_FILE} is not a facelift head "
                            f"(format {info.get('format') if isinstance(info, dict) else None!r}, "
                            f"expected {HEAD_FORMAT!r})")
        return candidate, info
    raise HeadError(f"no head at {store.where()}: found neither {CONFIG_FILE} nor head/{CONFIG_FILE}")


def load_head(folder_or_uri: str, endpoint_url: str | None = None, expect: str | None = None) -> Head:
    """Load a saved head from a local folder, an object-store URI or a run URI (``.../runs/<id>``).

    ``expect``: the head name the caller needs; a checkpoint of another head is a clear error.
    """
    store, info = read_head_config(str(folder_or_uri), endpoint_url)
    name = info.get("head")
    if name not in HEADS:
        raise HeadError(f"{store.where()} holds head {name!r}, which this version does not know; "
                        f"valid heads: {', '.join(HEADS)}")
    if expect is not None and name != expect:
        raise HeadError(f"{store.where()} is a {name!r} head, not {expect!r}")
    cls = HEADS[name]
    try:
        config = config_from_dict(cls.config_cls, info.get("config") or {})
    except (TypeError, ValueError) as exc:
        raise HeadError(f"invalid config for head {name!r} in {store.where()}: {exc}") from None
    head = cls(config, info.get("flavor", "full"))
    try:
        data = store.read_bytes(WEIGHTS_FILE)
    except FileNotFoundError:
        raise HeadError(f"head folder {store.where()} has no {WEIGHTS_FILE}") from None
    head.load_state_bytes(data, where=f"in {store.where()}")
    return head.eval()
