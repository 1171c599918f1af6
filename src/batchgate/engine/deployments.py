"""Deployments at run time: each one's client and how many requests it has in flight."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from batchgate.config import DeploymentConfig, ModelConfig, Settings
from batchgate.engine.limits import DeploymentLimits
from batchgate.observability.metrics import DeploymentSeries, ModelSeries
from batchgate.upstreams.base import Upstream


def make_upstream(model: ModelConfig, config: DeploymentConfig) -> Upstream:
    if config.provider == "local":
        from batchgate.upstreams.local_llama import LocalLlamaUpstream

        return LocalLlamaUpstream(model.name, config.model_path, config.max_concurrency, config.n_ctx)
    from batchgate.upstreams.openai_compat import OpenAICompatUpstream

    assert config.base_url is not None and config.model is not None
    return OpenAICompatUpstream(
        config.base_url,
        config.api_key,
        config.model,
        config.max_concurrency,
        name=config.name or model.name,
        max_response_bytes=config.max_response_bytes,
    )


@dataclass(eq=False)
class Deployment:
    config: DeploymentConfig
    upstream: Upstream
    in_flight: int = 0  # calls on the wire; a request waiting out a retry backoff holds no slot
    served: int = 0  # times chosen: breaks ties so idle traffic still follows the weights
    limits: DeploymentLimits = field(init=False)
    series: DeploymentSeries = field(init=False)

    def __post_init__(self) -> None:
        self.limits = DeploymentLimits(self.config)
        self.series = DeploymentSeries(self.name)

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
    series: ModelSeries = field(init=False)

    def __post_init__(self) -> None:
        self.series = ModelSeries(self.model.name)

    def usable(self, only: str | None = None) -> list[Deployment]:
        """The deployments requests may go to: those whose circuit is closed (or due a probe); when
        every one is ejected, all of them, so requests fail or retry as usual instead of waiting."""
        named = [d for d in self.deployments if only is None or d.name == only]
        now = time.monotonic()
        healthy = [d for d in named if d.limits.circuit.allows(now)]
        return healthy or named

    def pause_ends_in(self, now: float) -> float | None:
        """Seconds until the first paused (Retry-After) usable deployment may be used again."""
        ends = [d.limits.paused_until - now for d in self.usable() if d.limits.paused_until > now]
        return min(ends) if ends else None

    def free_slots(self) -> int:
        return sum(d.free for d in self.usable())

    def pick(self, only: str | None = None) -> Deployment | None:
        """A usable deployment with a free slot: fewest requests in flight per unit of weight, ties
        broken by requests already served per unit of weight (weighted round robin when idle).

        `only` pins the choice to one deployment by name (TrueFoundry's x-tfy-provider-name).
        """
        candidates = [d for d in self.usable(only) if d.free > 0]
        if not candidates:
            return None
        chosen = min(candidates, key=lambda d: (d.in_flight / d.config.weight, d.served / d.config.weight))
        chosen.served += 1
        return chosen


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
