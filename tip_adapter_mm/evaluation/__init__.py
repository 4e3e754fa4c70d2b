from .accuracy import StableAccuracy, ranked_labels, top1_hits
from .generalization import SubsetAccuracy, harmonic_mean

__all__ = ['StableAccuracy', 'ranked_labels', 'top1_hits', 'SubsetAccuracy',
           'harmonic_mean']
