"""The head contract: a ``torch.nn.Module`` with a stateless ``step``, ``translate``, optimizers, save/load.

A saved head is a portable folder: ``config.json`` (format, head name, flavor, config, facelift version) and
``model.safetensors`` (the full state dict). Only torch is imported at module level; storage and safetensors
are imported when saving/loading, so the models run on a machine with torch alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

log = logging.getLogger(__name__)

HEAD_FORMAT = "facelift.head/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class HeadError(ValueError):
    """A head name, flavor, config or saved folder is invalid."""


COMPILE_MODES = ("none", "regional", "full")
DEFAULT_COMPILE = "regional"  # compile=True: measured fastest to compile (docs/train_heads.md)


def compile_mode(value: bool | str | None) -> str:
    """A compile setting as one of ``COMPILE_MODES``: ``True`` -> ``DEFAULT_COMPILE``, ``False``/None -> none."""
    if value is None or value is False:
        return "none"
    if value is True:
        return DEFAULT_COMPILE
    if value not in COMPILE_MODES:
        raise HeadError(f"unknown compile mode {value!r}; valid: {', '.join(COMPILE_MODES)} (or true/false)")
    return value


@dataclass
class OptimizerSpec:
    """One optimizer of a head: it minimises ``losses[loss_key]`` over ``params``."""

    name: str
    optimizer: torch.optim.Optimizer
    loss_key: str
    params: list[nn.Parameter]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


def adam(params: list[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused into one kernel per step when the parameters are on a GPU (build after ``.to(device)``)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=bool(params) and params[0].is_cuda)


def config_to_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise HeadError(f"unknown {cls.__name__} fields: {', '.join(unknown)}; valid: {', '.join(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


class Head(nn.Module):
    """Base class. Subclasses set ``name``, ``config_cls``, ``flavors``, ``paired`` and implement the rest."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    flavors: ClassVar[dict[str, dict[str, Any]]]
    paired: ClassVar[bool]
    monitor: ClassVar[str] = "loss"  # the validation value (minimised) for early stopping / the exported head
    early_stopping: ClassVar[bool] = True  # the training loop's default stopping rule for this head
    selection: ClassVar[str] = "val"  # which weights training exports by default (tasks/train/select.py)

    def __init__(self, config: Any, flavor: str = "full") -> None:
        super().__init__()
        self.config = config
        self.flavor = flavor
        self.compiled = "none"  # the compile mode applied by compile_modules

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def make_config(cls, flavor: str = "full", **overrides: Any) -> Any:
        """The flavor's config with ``overrides``, checked (no networks built): unknown flavor or field, bad value."""
        if flavor not in cls.flavors:
            raise HeadError(f"unknown flavor {flavor!r} for head {cls.name!r}; valid: {', '.join(cls.flavors)}")
        return config_from_dict(cls.config_cls, {**cls.flavors[flavor], **overrides})

    @classmethod
    def build(cls, flavor: str = "full", **overrides: Any) -> Head:
        return cls(cls.make_config(flavor, **overrides), flavor)

    # -- the contract -----------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        raise NotImplementedError

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named losses for one batch (``schnell``, ``dev``: NCHW in [-1, 1]); ``loss`` is the main one."""
        raise NotImplementedError

    def inference_module(self) -> nn.Module:
        """The schnell -> dev generator alone."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called by :func:`train_step` after every optimizer has stepped (a weight average, say)."""

    def configure_optimizers(self, total_steps: int | None = None, lr: float | None = None) -> list[OptimizerSpec]:
        raise NotImplementedError

    def metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Validation metrics per image, shape ``[N]`` (e.g. ``ssim``); losses come from ``step``."""
        return {}

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects NCHW RGB input, got shape {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"{self.name} ({self.flavor}) needs H and W divisible by {m}, "
                             f"got {tuple(x.shape[-2:])}")

    @torch.no_grad()
    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """schnell -> dev-look, [-1, 1] in and out."""
        self.check_input(x)
        return self.inference_module()(x).clamp(-1, 1)

    def compile_modules(self, mode: bool | str = True, **kwargs: Any) -> str:
        """``torch.compile`` the trainable networks in place (state-dict keys and maths unchanged).

        ``mode`` (see ``compile_mode``): ``regional`` compiles each network's regions (``compile_regions``:
        for the ResNet generators the stem, every residual block - one shared graph - and the tail; a
        network without regions is compiled whole), ``full`` each network whole, ``none`` nothing;
        ``True`` is ``DEFAULT_COMPILE``. Static shapes (``dynamic=False``) unless ``kwargs`` say otherwise.
        Returns the mode used.
        """
        mode = compile_mode(mode)
        if mode == "none":
            return mode
        if self.compiled != "none":
            raise HeadError(f"{self.name} is already compiled ({self.compiled})")
        kwargs.setdefault("dynamic", False)
        for module in self.children():
            if not any(p.requires_grad for p in module.parameters()):
                continue
            regions = getattr(module, "compile_regions", None)
            if mode == "regional" and regions is not None:
                regions(**kwargs)
            else:
                module.compile(**kwargs)
        self.compiled = mode
        return mode

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the compiled networks should see it (training with ``compiled`` set); else ``x`` itself.

        Dynamo guards on the dtype, strides and ``requires_grad`` of a compiled graph's inputs, so a network
        fed both real images (fp32, no grad) and generated ones (autocast dtype, grad) compiles once per
        kind. Real images are therefore fed like generated ones: cast to the autocast dtype (what the first
        conv casts them to anyway) and as a leaf that requires grad, so each network compiles one graph.
        The optimizers' ``backward(inputs=params)`` never accumulates into these leaves: losses and
        parameter grads are unchanged (the discarded input grads of the first conv cost well under 1%).
        """
        if self.compiled == "none" or not torch.is_grad_enabled() or x.requires_grad:
            return x
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return x.detach().to(dtype).requires_grad_()

    def describe(self) -> dict[str, Any]:
        from facelift import __version__

        return {"format": HEAD_FORMAT, "head": self.name, "flavor": self.flavor,
                "config": config_to_dict(self.config), "facelift_version": __version__}

    # -- persistence ------------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        from safetensors.torch import save

        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        return save(state, metadata={"format": HEAD_FORMAT, "head": self.name})

    def save(self, folder: str | Path, endpoint_url: str | None = None) -> str:
        """Write ``config.json`` + ``model.safetensors`` to a local folder or an object-store URI."""
        from facelift.storage import Store

        store = Store(str(folder), endpoint_url)
        store.write_bytes(WEIGHTS_FILE, self.state_bytes())
        store.write_bytes(CONFIG_FILE, json.dumps(self.describe(), indent=2).encode())
        return store.url()

    def load_state_bytes(self, data: bytes, where: str = "") -> None:
        from safetensors.torch import load

        try:
            state = load(data)
        except Exception as exc:  # noqa: BLE001 - corrupt file of any kind
            raise HeadError(f"corrupt {WEIGHTS_FILE} {where}: {exc}") from exc
        missing, unexpected = self._state_mismatch(state)
        if missing or unexpected:
            raise HeadError(f"{WEIGHTS_FILE} {where} does not match head {self.name!r} ({self.flavor}): "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:
            raise HeadError(f"{WEIGHTS_FILE} {where} does not fit head {self.name!r}: {exc}") from exc

    def _state_mismatch(self, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        own = set(self.state_dict())
        return sorted(own - set(state)), sorted(set(state) - own)


def train_step(head: Head, optimizers: list[OptimizerSpec], batch: dict[str, torch.Tensor],
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               sync_grads: Callable[[list[nn.Parameter]], None] | None = None) -> dict[str, torch.Tensor]:
    """One training step for any head: forward all losses, then for each optimizer in order: zero its
    grads, backward its loss, average grads across workers (``sync_grads``), step, advance its schedule."""
    with autocast():
        losses = head.step(batch)
    for spec in optimizers:
        spec.optimizer.zero_grad(set_to_none=True)
        # inputs= limits the backward to this optimizer's parameters (the G loss does not fill D grads)
        losses[spec.loss_key].backward(inputs=spec.params)
        if sync_grads is not None:
            sync_grads(spec.params)
        spec.optimizer.step()
        if spec.scheduler is not None:
            spec.scheduler.step()
    head.after_step()
    return {k: v.detach() for k, v in losses.items()}
