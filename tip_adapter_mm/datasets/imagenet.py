"""ImageNet with the class names CLIP's zero-shot evaluation uses."""
from mmpretrain.datasets import ImageNet
from mmpretrain.registry import DATASETS
from .class_names import read_class_names


@DATASETS.register_module()
class CLIPImageNet(ImageNet):
    """MMPretrain's :class:`ImageNet`, labelled with CLIP's 1000 simple
    class names ("tench", "goldfish", ...) instead of the WordNet synsets.

    Loading (``data_root``, ``split``, ``ann_file``) is MMPretrain's own;
    only ``metainfo['classes']`` differs, in the same label order.
    """

    METAINFO = {'classes': read_class_names('imagenet')}
