"""What tokens cost, from each model's configured `price` (USD per million tokens)."""

from __future__ import annotations

from batchgate.config import PriceConfig, Settings

TICKS_PER_USD = 10**10  # xAI reports costs in ticks of 1e-10 USD


def priced_usd(price: PriceConfig, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


def cost_usd(settings: Settings, model: str | None, input_tokens: int, output_tokens: int) -> float:
    config = settings.model(model) if model else None
    return 0.0 if config is None else priced_usd(config.price, input_tokens, output_tokens)


def cost_ticks(settings: Settings, model: str | None, input_tokens: int, output_tokens: int) -> int:
    return round(cost_usd(settings, model, input_tokens, output_tokens) * TICKS_PER_USD)
