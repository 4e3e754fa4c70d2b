from .augmented_views import AugmentedViewsDataset
from .few_shot import FewShotDataset, HoldoutDataset, SubsetDataset
from .class_names import check_class_names, read_class_names
from .imagenet import CLIPImageNet
from .templates import PROMPT_TEMPLATES, get_templates

__all__ = [
    'AugmentedViewsDataset', 'FewShotDataset', 'HoldoutDataset',
    'SubsetDataset', 'CLIPImageNet', 'read_class_names', 'check_class_names', 'PROMPT_TEMPLATES',
    'get_templates'
]
