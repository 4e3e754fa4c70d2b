from .view_cycling import ViewCyclingSampler

__all__ = ['ViewCyclingSampler']
