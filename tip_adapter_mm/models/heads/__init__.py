from .ape_head import APEHead
from .base_cache_head import BaseCacheHead
from .gda_head import GDAHead
from .tip_adapter_head import TipAdapterHead
from .zero_shot_head import ZeroShotCacheHead

__all__ = ['BaseCacheHead', 'ZeroShotCacheHead', 'TipAdapterHead', 'GDAHead',
           'APEHead']
