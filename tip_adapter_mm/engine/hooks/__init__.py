from .build_cache_hook import BuildCacheHook
from .search_hook import HyperparameterSearchHook
from .validate_after_resume_hook import ValidateAfterResumeHook

__all__ = [
    'BuildCacheHook', 'HyperparameterSearchHook', 'ValidateAfterResumeHook'
]
