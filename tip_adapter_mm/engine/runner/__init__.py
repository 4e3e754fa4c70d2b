from .few_shot_runner import FewShotRunner

__all__ = ['FewShotRunner']
