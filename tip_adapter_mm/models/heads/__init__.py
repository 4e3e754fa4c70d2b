from .ape_head import APEHead
from .base_cache_head import BaseCacheHead, SearchStage
from .cache_only_head import CacheOnlyHead
from .dual_cache_head import DualCacheTipAdapterHead
from .gda_head import GDAHead
from .tip_adapter_head import TipAdapterHead
from .zero_shot_head import ZeroShotCacheHead

__all__ = ['BaseCacheHead', 'SearchStage', 'ZeroShotCacheHead',
           'TipAdapterHead', 'DualCacheTipAdapterHead', 'CacheOnlyHead',
           'GDAHead', 'APEHead']
