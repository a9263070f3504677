"""Typed configuration: named profiles, overridden by a config file, the environment and the CLI.

Precedence (lowest first): profile defaults < config file (TOML/YAML/JSON) < ``FACELIFT_*`` environment
variables < explicit overrides (CLI flags, ``--set a.b=value``, flow parameters).
Environment keys use ``__`` between levels: ``FACELIFT_GENERATION__DEV__STRENGTH=0.5``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from facelift.splits import SplitSpec

ENV_PREFIX = "FACELIFT_"
# FACELIFT_* variables that belong to other parts of facelift, not to the build config (``env_overrides`` skips
# them): the U-Net's LPIPS backbone file (models/losses.py). Without this, setting it broke `facelift build`.
OTHER_SETTINGS = frozenset({"FACELIFT_LPIPS_BACKBONE"})
BASELINE_PROMPT = "A professional business portrait"
ENRICHED_TEMPLATE = "A professional portrait of {name}"


class ConfigError(ValueError):
    """A configuration value, file or override is invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PromptConfig(_Model):
    mode: Literal["enriched", "baseline"] = "enriched"
    template: str = ENRICHED_TEMPLATE
    baseline_prompt: str = BASELINE_PROMPT

    @field_validator("template")
    @classmethod
    def _has_name(cls, v: str) -> str:
        if "{name}" not in v:
            raise ValueError("prompt template must contain '{name}'")
        return v


class PlanConfig(_Model):
    names_uri: str | None = Field(None, description="IMDb name.basics.tsv[.gz]; None = bundled sample")
    count: int | None = Field(None, ge=1, description="pairs to plan; None = every eligible name")
    seed: int = Field(0, ge=0)
    shard_size: int = Field(64, ge=1, le=100_000)
    prompt: PromptConfig = PromptConfig()
    weights_uri: str | None = Field(None, description="per-name sampling weights (facelift rebalance)")


class StageConfig(_Model):
    model: str = Field(description="hub id, local folder, or tiny://<name> for the built-in tiny model")
    revision: str | None = None
    steps: int = Field(ge=1)
    guidance: float = Field(ge=0)
    max_sequence_length: int = Field(256, ge=8, le=512)


class DevStageConfig(StageConfig):
    strength: float = Field(0.6, gt=0, le=1)


class GenerationConfig(_Model):
    schnell: StageConfig
    dev: DevStageConfig
    height: int = Field(512, ge=16)
    width: int = Field(512, ge=16)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    batch_size: int = Field(4, ge=1)
    png_compress_level: int = Field(1, ge=0, le=9)
    share_text_encoders: bool = Field(True, description="reuse schnell's text encoders/VAE when identical")
    compile: Literal["none", "regional", "full"] = Field(
        "none", description="torch.compile the transformers: regional = each repeated block once (fast to "
                            "compile), full = the whole model (true = regional)")
    fp8: bool = Field(False, description="FP8 (e4m3) weights and activations in the transformer blocks' "
                                         "linears (Ada/Hopper GPUs); changes the images, so the dataset id")
    placement: Literal["auto", "resident", "stage", "pools"] = Field(
        "auto", description="resident: both transformers on each GPU; stage: one at a time, swapped per shard; "
                            "pools: separate schnell and dev actors (ray.schnell_workers)")
    sim_seconds_per_pair: float = Field(0.0, ge=0, description="sim:// models (profile sim): seconds a stand-in "
                                        "worker sleeps per pair instead of rendering")
    sim_slots_per_actor: int = Field(1, ge=1, description="sim:// models: simulated workers per Ray actor (a "
                                     "threaded actor; each slot is one worker to the scheduler)")

    @property
    def simulated(self) -> bool:
        """True for the dry-run stand-in renderer (``sim://`` models): placeholder images, no FLUX."""
        return self.schnell.model.startswith("sim://") or self.dev.model.startswith("sim://")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_bool(cls, v: Any) -> Any:
        return {True: "regional", False: "none"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"{v} is not a multiple of 16 (FLUX packs 2x2 latent patches)")
        return v


class StorageConfig(_Model):
    root: str = Field("./data", description="local path, file:// or s3://bucket/prefix")
    endpoint_url: str | None = Field(None, description="S3 endpoint (SeaweedFS, MinIO); keys come from env")
    connect_timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    commit_retry_s: float = Field(600.0, ge=0, description="how long a worker retries one shard's commit "
                                  "(upload) over the table it rendered before giving up; covers store outages")
    commit_backoff_s: float = Field(1.0, gt=0, description="first retry delay; doubles per attempt, jittered")
    commit_backoff_max_s: float = Field(30.0, gt=0, description="longest delay between commit attempts")
    lease_ttl_s: float = Field(120.0, gt=0, description="a writer's lease (one writer per dataset/run) expires "
                               "this long after its last heartbeat (a crashed writer's lease frees itself)")
    lease_wait_s: float = Field(3600.0, ge=0, description="how long a second writer waits for the lease before "
                                "it exits naming the holder (0: at once)")


class ChaosConfig(_Model):
    """Fault injection for resilience tests: a worker kills its own process, or hangs, once on this shard."""

    kill_on_shard: int | None = None
    hang_on_shard: int | None = Field(None, description="the worker sleeps forever on this shard (a hung GPU), once")
    marker: str | None = Field(None, description="file created before the kill or hang so it happens once")
    kill_during: Literal["render", "commit"] = Field(
        "render", description="render: before the shard renders; commit: after it rendered, as it uploads")
    shard_delay_s: float = Field(0.0, ge=0, description="sleep before each shard (slows a build for outage tests)")


class RayConfig(_Model):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    num_workers: int = Field(1, ge=1, description="generation actors (one per GPU)")
    num_gpus_per_worker: float = Field(1.0, ge=0)
    num_cpus_per_worker: float = Field(1.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="extra Ray resources per worker")
    schnell_workers: int | None = Field(
        None, ge=1, description="placement=pools: actors in the schnell pool (the rest run dev); None = sized "
                                "by the two stages' step counts")
    max_restarts: int = Field(2, ge=0)
    shard_retries: int = Field(2, ge=0, description="a failed shard is tried again this many times, each time on "
                                                    "another worker where one is up")
    shard_timeout_s: float | None = Field(
        None, gt=0, description="a shard running longer on its worker is moved to another one and the worker "
                                "replaced (a hung GPU); None: shard_timeout_margin x the slowest shard so far "
                                "(at least shard_timeout_min_s), first_shard_timeout_s until one has finished")
    shard_timeout_margin: float = Field(4.0, ge=1)
    shard_timeout_min_s: float = Field(60.0, gt=0)
    first_shard_timeout_s: float = Field(1800.0, gt=0, description="before any shard has finished (covers "
                                                                  "warm-up and torch.compile)")
    shards_per_worker: int = Field(2, ge=1, description="shards in flight per worker: the next one waits at the "
                                                        "actor, so a GPU never idles for a round trip")
    no_worker_timeout_s: float = Field(600.0, gt=0, description="the build fails once no worker has been up for "
                                                                "this long (all dead, or restarting with no room)")
    chaos: ChaosConfig = ChaosConfig()


class BuildConfig(_Model):
    profile: str
    dataset_id: str | None = None
    plan: PlanConfig = PlanConfig()
    # train / val / test fractions, fixed in dataset.json when the dataset is created (facelift.splits); not
    # part of the identity: they change which pairs are held out, not what a pair is
    splits: SplitSpec = SplitSpec()
    generation: GenerationConfig
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    cache_dir: str = Field(
        default_factory=lambda: os.environ.get("FACELIFT_CACHE", str(Path.home() / ".cache" / "facelift"))
    )

    @field_validator("dataset_id")
    @classmethod
    def _valid_id(cls, v: str | None) -> str | None:
        from facelift.ids import check_id

        return None if v is None else check_id(v, "dataset id")

    def fingerprint(self) -> str:
        """Hash of everything that changes what a dataset contains (not where or how fast it is built)."""
        generation = self.generation.model_dump(
            exclude={"device", "batch_size", "png_compress_level", "share_text_encoders", "compile", "placement",
                     "sim_seconds_per_pair", "sim_slots_per_actor"}
        )
        if not generation["fp8"]:
            del generation["fp8"]  # datasets built before the option existed keep their ids
        keep = {"plan": self.plan.model_dump(exclude={"names_uri"}),  # the names file counts by content
                "generation": generation}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()

    def public_dict(self) -> dict[str, Any]:
        """The resolved configuration as saved with every dataset (holds no credentials)."""
        return self.model_dump(mode="json", exclude={"ray": {"chaos"}})


PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "plan": {"count": 24, "shard_size": 8},
        "generation": {
            # the tiny T5 tokenizer spends about one token per character: 128 holds every bundled prompt
            "schnell": {"model": "tiny://schnell", "steps": 2, "guidance": 0.0, "max_sequence_length": 128},
            "dev": {"model": "tiny://dev", "steps": 4, "guidance": 3.5, "strength": 0.6,
                    "max_sequence_length": 128},
            "height": 64, "width": 64, "dtype": "float32", "device": "cpu", "batch_size": 4,
        },
        "ray": {"num_workers": 1, "num_gpus_per_worker": 0, "num_cpus_per_worker": 1},
    },
    "flux": {
        "plan": {"shard_size": 64},
        "generation": {
            "schnell": {"model": "black-forest-labs/FLUX.1-schnell", "steps": 4, "guidance": 0.0,
                        "max_sequence_length": 256},
            "dev": {"model": "black-forest-labs/FLUX.1-dev", "steps": 28, "guidance": 3.5, "strength": 0.6,
                    "max_sequence_length": 256},
            "height": 512, "width": 512, "dtype": "bfloat16", "device": "auto", "batch_size": 4,
        },
        "ray": {"num_workers": 1, "num_gpus_per_worker": 1, "num_cpus_per_worker": 4},
    },
    # dry run of a real build without GPUs (docs/build.md, "Rehearsing at scale"): the flux profile's shapes, a
    # stand-in renderer (tasks/build/sim.py) that sleeps and writes placeholder PNGs; fractional CPU per actor
    "sim": {
        "plan": {"shard_size": 64},
        "generation": {
            "schnell": {"model": "sim://schnell", "steps": 4, "guidance": 0.0, "max_sequence_length": 256},
            "dev": {"model": "sim://dev", "steps": 28, "guidance": 3.5, "strength": 0.6, "max_sequence_length": 256},
            "height": 512, "width": 512, "dtype": "bfloat16", "device": "cpu", "batch_size": 4,
            "sim_seconds_per_pair": 0.0,
        },
        "ray": {"num_workers": 1, "num_gpus_per_worker": 0, "num_cpus_per_worker": 0.01},
    },
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(raw: str) -> Any:
    """Values from env/CLI: JSON when it parses (numbers, true/false/null, lists), else the plain string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def dotted_to_nested(pairs: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in pairs.items():
        parts = [p for p in dotted.split(".") if p]
        if not parts:
            raise ConfigError(f"empty override key {dotted!r}")
        cur = nested
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"override {dotted!r} conflicts with another override")
        cur[parts[-1]] = value
    return nested


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(raw)
    return out


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = dict(os.environ if environ is None else environ)
    skip = {"FACELIFT_CACHE", "FACELIFT_CONFIG", "FACELIFT_PROFILE", *OTHER_SETTINGS}
    pairs = {
        key[len(ENV_PREFIX):].lower().replace("__", "."): _parse_value(value)
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key not in skip
    }
    return dotted_to_nested(pairs)


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(text)
        if p.suffix in {".yaml", ".yml"}:
            import yaml

            return yaml.safe_load(text) or {}
        return json.loads(text)
    except Exception as exc:  # noqa: BLE001 - one clear error for any parser
        raise ConfigError(f"cannot parse config file {p}: {exc}") from exc


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error in one line: ``field.sub: message; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())


def resolve_config(
    profile: str | None = None,
    *,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> BuildConfig:
    """Build a validated :class:`BuildConfig`. ``overrides`` uses dotted keys (``"plan.count": 10``)."""
    env = dict(os.environ if environ is None else environ)
    profile = profile or env.get("FACELIFT_PROFILE") or "tiny"
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(sorted(PROFILES))}")
    merged = deep_merge(PROFILES[profile], {"profile": profile})
    config_file = config_file or env.get("FACELIFT_CONFIG")
    if config_file:
        merged = deep_merge(merged, load_config_file(config_file))
    merged = deep_merge(merged, env_overrides(env))
    merged = deep_merge(merged, dotted_to_nested(overrides or {}))
    try:
        return BuildConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration (profile {profile!r}): {validation_problems(exc)}") from None
