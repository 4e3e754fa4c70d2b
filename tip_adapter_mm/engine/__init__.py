from .feature_extraction import dataset_fingerprint, extract_features
from .feature_store import FeatureStore
from .hooks import *  # noqa: F401,F403
from .optimizers import TrainableParamsOptimWrapperConstructor
from .runner import FewShotRunner
from .search import SearchResult, grid_search, save_search_report

__all__ = [
    'extract_features', 'dataset_fingerprint', 'FeatureStore',
    'FewShotRunner', 'TrainableParamsOptimWrapperConstructor',
    'SearchResult', 'grid_search', 'save_search_report'
]
