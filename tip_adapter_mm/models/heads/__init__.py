from .base_cache_head import BaseCacheHead
from .tip_adapter_head import TipAdapterHead

__all__ = ['BaseCacheHead', 'TipAdapterHead']
