from .few_shot_runner import FewShotRunner
from .loops import (FewShotTrainLoop, StoredFeaturesTestLoop,
                    StoredFeaturesValLoop)

__all__ = [
    'FewShotRunner', 'FewShotTrainLoop', 'StoredFeaturesValLoop',
    'StoredFeaturesTestLoop'
]
