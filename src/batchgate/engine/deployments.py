"""Deployments at run time: each one's client and how many requests it has in flight."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from batchgate.config import DeploymentConfig, ModelConfig, Settings
from batchgate.engine.limits import DeploymentLimits
from batchgate.upstreams.base import Upstream


def make_upstream(model: ModelConfig, config: DeploymentConfig) -> Upstream:
    if config.provider == "local":
        from batchgate.upstreams.local_llama import LocalLlamaUpstream

        return LocalLlamaUpstream(model.name, config.model_path, config.max_concurrency, config.n_ctx)
    from batchgate.upstreams.openai_compat import OpenAICompatUpstream

    assert config.base_url is not None and config.model is not None
    return OpenAICompatUpstream(config.base_url, config.api_key, config.model, config.max_concurrency)


@dataclass(eq=False)
class Deployment:
    config: DeploymentConfig
    upstream: Upstream
    in_flight: int = 0  # calls on the wire; a request waiting out a retry backoff holds no slot
    limits: DeploymentLimits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = DeploymentLimits(self.config)

    @property
    def name(self) -> str:
        assert self.config.name is not None
        return self.config.name

    @property
    def free(self) -> int:
        """Slots free now: the AIMD window less calls in flight; none while the upstream asked for a pause."""
        if not self.limits.available(time.monotonic()):
            return 0
        return max(0, self.limits.concurrency - self.in_flight)


@dataclass(eq=False)
class ModelPool:
    """All deployments serving one model name."""

    model: ModelConfig
    deployments: list[Deployment] = field(default_factory=list)

    def free_slots(self) -> int:
        return sum(d.free for d in self.deployments)

    def pick(self, only: str | None = None) -> Deployment | None:
        """The deployment with a free slot and the fewest requests in flight per unit of weight.

        `only` pins the choice to one deployment by name (TrueFoundry's x-tfy-provider-name).
        """
        candidates = [d for d in self.deployments if d.free > 0 and (only is None or d.name == only)]
        now = time.monotonic()
        # A deployment whose circuit is open is skipped while another can serve; when none can,
        # requests still go (and fail or retry as usual) rather than wait out the cooldown.
        healthy = [d for d in candidates if d.limits.circuit.allows(now)]
        if not candidates:
            return None
        return min(healthy or candidates, key=lambda d: (d.in_flight + 1) / d.config.weight)


def deployment_names(settings: Settings) -> dict[str, str]:
    """Every deployment's name and the model it serves."""
    return {d.name: m.name for m in settings.models for d in m.deployments if d.name}


def build_pools(settings: Settings) -> dict[str, ModelPool]:
    return {
        model.name: ModelPool(model, [Deployment(d, make_upstream(model, d)) for d in model.deployments])
        for model in settings.models
    }


async def close_pools(pools: dict[str, ModelPool]) -> None:
    for pool in pools.values():
        for deployment in pool.deployments:
            await deployment.upstream.close()
