from .accuracy import StableAccuracy, ranked_labels, top1_hits

__all__ = ['StableAccuracy', 'ranked_labels', 'top1_hits']
