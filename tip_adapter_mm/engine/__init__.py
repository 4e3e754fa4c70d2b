from .feature_extraction import dataset_fingerprint, extract_features
from .feature_store import FeatureStore
from .hooks import *  # noqa: F401,F403
from .search import SearchResult, grid_search, save_search_report

__all__ = [
    'extract_features', 'dataset_fingerprint', 'FeatureStore',
    'SearchResult', 'grid_search', 'save_search_report'
]
