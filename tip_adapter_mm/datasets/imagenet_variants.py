"""The four ImageNet test sets with a distribution shift, read from their
released folder layouts and labelled with ImageNet's 1000 class indices.

A model adapted on ImageNet (1000 classes, label = position of the WordNet
id in the sorted list of the 1000 ids, as ``ImageNet/train/<wnid>``) is
tested on them as it is. ImageNet-A and ImageNet-R hold 200 of the 1000
classes: their ``metainfo['class_subset']`` lists those labels, and
:class:`~tip_adapter_mm.evaluation.SubsetAccuracy` ranks only those logits.

Layouts (``data_root`` is the dataset's own folder; the sub-folder names
are the released archives' and CoOp's):

- ImageNet-V2 (matched frequency):
  ``imagenetv2-matched-frequency-format-val/<label 0..999>/<image>``
- ImageNet-Sketch: ``images/<wnid>/<image>`` (1000 classes)
- ImageNet-A: ``imagenet-a/<wnid>/<image>`` (200 classes)
- ImageNet-R: ``imagenet-r/<wnid>/<image>`` (200 classes)

Files beside the class folders (the archives' ``README.txt``) are ignored.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS
from .class_names import read_class_names

#: Extensions of the images in the four releases (compared lower-case).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def imagenet_wnids() -> Tuple[str, ...]:
    """ImageNet's 1000 WordNet ids in label order (sorted), ``(1000,)``."""
    return read_class_names('imagenet_wnids')


class ImageNetVariant(BaseDataset):
    """A test-only ImageNet variant: class folders of images.

    Subclasses set ``IMAGE_DIR`` (the folder under ``data_root`` holding
    the class folders), ``NUM_CLASSES`` (how many class folders the release
    has) and :meth:`folder_label` (class folder name -> ImageNet label).

    ``metainfo['classes']`` is always CLIP's 1000 ImageNet names (the
    labels index it); ``metainfo['class_subset']`` is the sorted tuple of
    the labels that have a class folder.

    Args:
        data_root (str): The dataset's folder, e.g. ``'data/imagenet-a'``.
        image_dir (str, optional): The class-folder parent under
            ``data_root``; defaults to the release's (``IMAGE_DIR``).
        pipeline (list): Transforms.
    """

    IMAGE_DIR = ''
    NUM_CLASSES = 1000
    METAINFO = {'classes': read_class_names('imagenet')}

    def __init__(self,
                 data_root: str,
                 image_dir: Optional[str] = None,
                 pipeline: Sequence = (),
                 **kwargs) -> None:
        self.image_dir = self.IMAGE_DIR if image_dir is None else image_dir
        super().__init__(
            ann_file='',
            data_root=data_root,
            data_prefix=self.image_dir,
            pipeline=pipeline,
            test_mode=True,
            **kwargs)

    def layout(self) -> str:
        """The expected folder layout, for error messages."""
        raise NotImplementedError

    def folder_label(self, folder: str, wnid_labels: Dict[str, int]) -> int:
        """The ImageNet label of class folder ``folder``."""
        raise NotImplementedError

    def load_data_list(self) -> List[dict]:
        root = self.img_prefix
        if not osp.isdir(root):
            raise FileNotFoundError(
                f'{type(self).__name__}: image folder {root!r} not found. '
                f'Expected layout:\n{self.layout()}')
        wnid_labels = {w: i for i, w in enumerate(imagenet_wnids())}
        folders = sorted(f for f in os.listdir(root)
                         if osp.isdir(osp.join(root, f))
                         and not f.startswith('.'))
        if len(folders) != self.NUM_CLASSES:
            raise ValueError(
                f'{type(self).__name__}: {root!r} has {len(folders)} class '
                f'folders, expected {self.NUM_CLASSES}. Expected layout:\n'
                f'{self.layout()}')
        labels = [self.folder_label(f, wnid_labels) for f in folders]
        data_list = []
        for folder, label in zip(folders, labels):
            folder_path = osp.join(root, folder)
            images = sorted(
                f for f in os.listdir(folder_path)
                if osp.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            if not images:
                raise FileNotFoundError(
                    f'{type(self).__name__}: class folder {folder_path!r} '
                    f'holds no image ({", ".join(IMAGE_EXTENSIONS)}).')
            data_list += [
                dict(img_path=osp.join(folder_path, f), gt_label=label)
                for f in images
            ]
        data_list.sort(key=lambda d: (d['gt_label'], d['img_path']))
        self._metainfo['class_subset'] = tuple(sorted(labels))
        return data_list


class _WnidFolders(ImageNetVariant):
    """Class folders named by WordNet id."""

    def folder_label(self, folder: str, wnid_labels: Dict[str, int]) -> int:
        if folder not in wnid_labels:
            raise ValueError(
                f'{type(self).__name__}: class folder '
                f'{osp.join(self.img_prefix, folder)!r} is not one of '
                "ImageNet's 1000 WordNet ids (expected a name like "
                f"'n01440764'). Expected layout:\n{self.layout()}")
        return wnid_labels[folder]


@DATASETS.register_module()
class ImageNetV2(ImageNetVariant):
    """ImageNet-V2, matched-frequency (Recht et al., ICML 2019): 10,000
    images, 10 per class, in folders named by the ImageNet label."""

    IMAGE_DIR = 'imagenetv2-matched-frequency-format-val'

    def layout(self) -> str:
        return (f'{self.data_root}/{self.image_dir}/<label 0..999>/'
                '<image>.jpeg  (1000 folders)')

    def folder_label(self, folder: str, wnid_labels: Dict[str, int]) -> int:
        if not (folder.isdigit() and int(folder) < 1000
                and str(int(folder)) == folder):
            raise ValueError(
                f'ImageNetV2: class folder '
                f'{osp.join(self.img_prefix, folder)!r} is not an ImageNet '
                'label 0..999 (folders are named by the label, without '
                f'leading zeros). Expected layout:\n{self.layout()}')
        return int(folder)


@DATASETS.register_module()
class ImageNetSketch(_WnidFolders):
    """ImageNet-Sketch (Wang et al., NeurIPS 2019): about 50 sketches per
    class, all 1000 classes."""

    IMAGE_DIR = 'images'

    def layout(self) -> str:
        return (f'{self.data_root}/{self.image_dir}/<wnid>/<image>.JPEG  '
                '(1000 folders)')


@DATASETS.register_module()
class ImageNetA(_WnidFolders):
    """ImageNet-A (Hendrycks et al., CVPR 2021): natural adversarial
    examples of 200 ImageNet classes."""

    IMAGE_DIR = 'imagenet-a'
    NUM_CLASSES = 200

    def layout(self) -> str:
        return (f'{self.data_root}/{self.image_dir}/<wnid>/<image>.jpg  '
                '(200 folders)')


@DATASETS.register_module()
class ImageNetR(_WnidFolders):
    """ImageNet-R(endition) (Hendrycks et al., ICCV 2021): art, cartoons,
    renditions of 200 ImageNet classes."""

    IMAGE_DIR = 'imagenet-r'
    NUM_CLASSES = 200

    def layout(self) -> str:
        return (f'{self.data_root}/{self.image_dir}/<wnid>/<image>.jpg  '
                '(200 folders)')
