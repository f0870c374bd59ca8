"""The cache a language-model forward carries, and whether the forward is a prefill or fills one."""

from __future__ import annotations


def cache_of(kwargs: dict):
    """The cache a forward's keyword arguments carry, or None: ``past_key_values`` (transformers 5.17), ``cache``
    (5.24)."""
    return kwargs.get("cache", kwargs.get("past_key_values"))


def is_prefill(cache, layer: int) -> bool:
    """Whether layer ``layer``'s cache (or the lack of one) holds nothing yet."""
    return cache is None or cache.get_seq_length(layer) == 0


def fills_cache(model, kwargs: dict) -> bool:
    """Whether a language-model forward with ``kwargs`` fills a cache (it makes one when asked and given none)."""
    use_cache = kwargs.get("use_cache")
    use_cache = model.config.text_config.use_cache if use_cache is None else use_cache
    return cache_of(kwargs) is not None or bool(use_cache)
