"""Typed settings of the serve application (``facelift serve`` flags map one to one)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServeConfig(BaseModel):
    """What ``facelift serve`` deploys: the models, batching, queue bounds, timeouts and autoscaling."""

    model_config = ConfigDict(extra="forbid")

    head: str = Field(description="head folder or run URI")
    profile: str = Field("tiny", description="FLUX profile: tiny (CPU, offline) or flux")
    size: int | None = Field(None, description="image size (default: the profile's)")
    device: str = "auto"
    endpoint_url: str | None = None
    cache_dir: str | None = None
    max_batch_size: int = Field(8, ge=1, description="@serve.batch: most requests per model call")
    batch_wait_s: float = Field(0.05, ge=0, description="@serve.batch: wait this long to fill a batch")
    max_ongoing_requests: int | None = Field(None, ge=1, description="per replica; default 2 x max_batch_size "
                                                                     "(must be >= the batch size)")
    max_queued_requests: int = Field(64, ge=1, description="per model deployment; past it: 503 + Retry-After")
    timeout_s: float = Field(120.0, gt=0, description="per request, end to end: past it 504")
    retry_after_s: int = Field(2, ge=1)
    min_replicas: int = Field(1, ge=1, description="model replicas kept warm (loading FLUX takes minutes; "
                                                   "Ray 2.51.1-2.52.0 cannot scale to zero anyway)")
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float | None = Field(None, gt=0, description="autoscaling target per replica; "
                                                                          "default: max_batch_size")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per model replica (default: 1 for flux, else 0)")
    num_cpus: float = Field(1, ge=0)
    api_key_file: str | None = Field(None, description="file holding the bearer API key; None serves without "
                                                       "a key, which facelift serve does only with --no-api-key")
    warmup_sizes: list[int] | None = Field(None, description="batch sizes each replica runs once before it is "
                                                             "ready; default every size 1..max_batch_size")
    safety_checker: bool | None = Field(None, description="diffusers' SD safety checker on each image "
                                                          "(tasks/serve/safety.py); default: on for flux, off "
                                                          "otherwise")
    safety_checker_model: str = Field("CompVis/stable-diffusion-safety-checker", description="hub id or folder")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if self.num_gpus is None:  # FLUX on a CPU replica would take hours per image
            self.num_gpus = 1.0 if self.profile == "flux" else 0.0
        if self.safety_checker is None:  # random tiny pictures need none; real FLUX output gets one
            self.safety_checker = self.profile == "flux"
        if self.max_ongoing_requests is None:
            self.max_ongoing_requests = 2 * self.max_batch_size
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size "
                             f"({self.max_batch_size}): every batch would be capped at {self.max_ongoing_requests}")
        if self.max_queued_requests < self.max_batch_size:  # Ray counts a request as queued until it is assigned
            raise ValueError(f"max_queued_requests ({self.max_queued_requests}) < max_batch_size "
                             f"({self.max_batch_size}): a batch of requests that arrive together would be refused "
                             f"with 503 while the replica is idle (Serve counts each as queued until it is "
                             f"assigned)")
        if self.target_ongoing_requests is None:
            self.target_ongoing_requests = float(self.max_batch_size)
        if self.warmup_sizes is None:
            self.warmup_sizes = list(range(1, self.max_batch_size + 1))
        if any(not 1 <= n <= self.max_batch_size for n in self.warmup_sizes):
            raise ValueError(f"warmup_sizes {self.warmup_sizes}: each must be in 1..max_batch_size "
                             f"({self.max_batch_size})")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self
