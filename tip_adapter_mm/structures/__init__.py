from .features import EncodedFeatures, Features, check_features, normalized

__all__ = ['EncodedFeatures', 'Features', 'check_features', 'normalized']
