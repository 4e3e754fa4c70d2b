from .augmented_views import AugmentedViewsDataset
from .stored_features import CachedViewsDataset, StoredFeaturesDataset
from .few_shot import FewShotDataset, HoldoutDataset, SubsetDataset
from .coop import (CoOpCaltech101, CoOpDTD, CoOpEuroSAT, CoOpFGVCAircraft,
                   CoOpFlowers102, CoOpFood101, CoOpOxfordPets,
                   CoOpSplitDataset, CoOpStanfordCars, CoOpSUN397, CoOpUCF101)
from .class_names import check_class_names, read_class_names
from .imagenet import CLIPImageNet
from .imagenet_variants import (ImageNetA, ImageNetR, ImageNetSketch,
                                ImageNetV2)
from .base_to_new import BaseToNewDataset, base_new_labels
from .split_files import (SplitFile, convert_coop_split, load_split_file,
                          save_split_file)
from .samplers import ViewCyclingSampler

__all__ = [
    'CoOpSplitDataset', 'CoOpCaltech101', 'CoOpOxfordPets', 'CoOpStanfordCars',
    'CoOpFlowers102', 'CoOpFood101', 'CoOpSUN397', 'CoOpDTD', 'CoOpEuroSAT',
    'CoOpUCF101', 'CoOpFGVCAircraft', 'AugmentedViewsDataset',
    'CachedViewsDataset', 'StoredFeaturesDataset', 'ViewCyclingSampler',
    'FewShotDataset', 'HoldoutDataset', 'SubsetDataset', 'CLIPImageNet',
    'read_class_names', 'check_class_names', 'SplitFile', 'save_split_file',
    'load_split_file', 'convert_coop_split', 'ImageNetV2', 'ImageNetSketch',
    'ImageNetA', 'ImageNetR', 'BaseToNewDataset', 'base_new_labels'
]
