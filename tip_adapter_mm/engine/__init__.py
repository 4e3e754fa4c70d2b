from .feature_extraction import (dataset_fingerprint, extract_features,
                                 precision_dtype)
from .feature_store import FeatureStore, StoredFeaturesError, read_features
from .few_shot_builder import FewShotBuilder, encoder_description
from .hooks import *  # noqa: F401,F403
from .optimizers import TrainableParamsOptimWrapperConstructor
from .runner import (FewShotRunner, FewShotTrainLoop, StoredFeaturesTestLoop,
                     StoredFeaturesValLoop)
from .search import SearchResult, grid_search, save_search_report

__all__ = [
    'extract_features', 'precision_dtype', 'dataset_fingerprint',
    'FeatureStore', 'StoredFeaturesError', 'read_features', 'FewShotBuilder',
    'encoder_description', 'FewShotRunner', 'FewShotTrainLoop',
    'StoredFeaturesValLoop', 'StoredFeaturesTestLoop',
    'TrainableParamsOptimWrapperConstructor', 'SearchResult', 'grid_search',
    'save_search_report'
]
