from .build_cache_hook import BuildCacheHook
from .search_hook import HyperparameterSearchHook

__all__ = ['BuildCacheHook', 'HyperparameterSearchHook']
