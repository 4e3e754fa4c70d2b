from .clip_few_shot import CLIPFewShotClassifier

__all__ = ['CLIPFewShotClassifier']
