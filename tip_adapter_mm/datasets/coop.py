"""The ten fine-grained benchmarks with CoOp's train/val/test splits."""
import json
import os.path as osp
from typing import Dict, List, Sequence, Tuple

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS


class _LayoutMixin:
    """Errors that name the file at fault and the expected layout."""

    def layout(self) -> str:
        raise NotImplementedError

    @staticmethod
    def check_split(split: str) -> str:
        if split not in ('train', 'val', 'test'):
            raise ValueError(
                f"split must be 'train', 'val' or 'test', got {split!r}")
        return split

    def check_file(self, path: str, what: str) -> None:
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'{type(self).__name__}: {what} {path!r} not found. '
                f'Expected layout:\n{self.layout()}')

    def check_first_image(self, data_list: List[dict]) -> None:
        if data_list and not osp.isfile(data_list[0]['img_path']):
            raise FileNotFoundError(
                f"{type(self).__name__}: image {data_list[0]['img_path']!r} "
                f'listed in the split is missing. Expected layout:\n'
                f'{self.layout()}')

    def prepare_data(self, idx: int):
        try:
            return super().prepare_data(idx)
        except Exception as err:
            path = self.get_data_info(idx).get('img_path')
            raise RuntimeError(
                f'{type(self).__name__}: could not load image {path!r} '
                f'(index {idx}): {type(err).__name__}: {err}. Expected a '
                f'readable image; layout:\n{self.layout()}') from err


@DATASETS.register_module()
class CoOpSplitDataset(_LayoutMixin, BaseDataset):
    """A dataset read from a CoOp split file.

    ``split_zhou_<Name>.json`` holds ``{"train"|"val"|"test": [[relative
    image path, label, class name], ...]}``. Class names (in label order)
    come from the file, all splits together.

    Args:
        data_root (str): The folder holding the dataset folders (CoOp's
            ``DATA``), e.g. ``'data'``.
        split (str): 'train', 'val' or 'test'.
        split_file (str): The split file, relative to ``data_root``.
        image_dir (str): The image folder the paths are relative to,
            relative to ``data_root``.
        pipeline (list): Transforms.
    """

    SPLIT_FILE = ''
    IMAGE_DIR = ''

    def __init__(self,
                 data_root: str = 'data',
                 split: str = 'train',
                 split_file: str = '',
                 image_dir: str = '',
                 pipeline: Sequence = (),
                 **kwargs) -> None:
        self.split = self.check_split(split)
        self.split_file = split_file or self.SPLIT_FILE
        self.image_dir = image_dir or self.IMAGE_DIR
        super().__init__(
            ann_file=self.split_file,
            data_root=data_root,
            data_prefix=self.image_dir,
            pipeline=pipeline,
            test_mode=split != 'train',
            **kwargs)

    def layout(self) -> str:
        return (f'{self.data_root}/{self.image_dir}/<relative path>\n'
                f'{self.data_root}/{self.split_file} = {{"train"|"val"|'
                '"test": [[relative_path, label, classname], ...]}')

    @staticmethod
    def class_names(splits: Dict[str, list]) -> Tuple[str, ...]:
        names: Dict[int, str] = {}
        for items in splits.values():
            for _, label, name in items:
                if names.setdefault(int(label), name) != name:
                    raise ValueError(
                        f'Label {label} is called both {names[int(label)]!r}'
                        f' and {name!r} in the split file.')
        if sorted(names) != list(range(len(names))):
            raise ValueError('Split-file labels must be 0..N-1, got '
                             f'{sorted(names)[:10]}...')
        return tuple(names[i] for i in range(len(names)))

    def load_data_list(self) -> List[dict]:
        self.check_file(self.ann_file, 'split file')
        with open(self.ann_file) as f:
            splits = json.load(f)
        if self.split not in splits:
            raise KeyError(f'{self.ann_file} has no {self.split!r} split; '
                           f'it has {sorted(splits)}.')
        self._metainfo['classes'] = self.class_names(splits)
        data_list = [
            dict(
                img_path=osp.join(self.img_prefix, path), gt_label=int(label))
            for path, label, _ in splits[self.split]
        ]
        self.check_first_image(data_list)
        return data_list


def _coop(name: str, image_dir: str, split_file: str, doc: str):
    cls = type(
        name, (CoOpSplitDataset, ),
        dict(
            IMAGE_DIR=image_dir,
            SPLIT_FILE=split_file,
            __doc__=f'{doc} with CoOp\'s split: images under '
            f'``<data_root>/{image_dir}``, split ``<data_root>/{split_file}``.'
        ))
    return DATASETS.register_module(name=name, module=cls)


CoOpCaltech101 = _coop('CoOpCaltech101', 'caltech-101/101_ObjectCategories',
                       'caltech-101/split_zhou_Caltech101.json',
                       'Caltech101 (100 classes)')
CoOpOxfordPets = _coop('CoOpOxfordPets', 'oxford_pets/images',
                       'oxford_pets/split_zhou_OxfordPets.json',
                       'Oxford-IIIT Pets (37 classes)')
CoOpStanfordCars = _coop('CoOpStanfordCars', 'stanford_cars',
                         'stanford_cars/split_zhou_StanfordCars.json',
                         'Stanford Cars (196 classes)')
CoOpFlowers102 = _coop('CoOpFlowers102', 'oxford_flowers/jpg',
                       'oxford_flowers/split_zhou_OxfordFlowers.json',
                       'Oxford Flowers 102 (102 classes)')
CoOpFood101 = _coop('CoOpFood101', 'food-101/images',
                    'food-101/split_zhou_Food101.json',
                    'Food-101 (101 classes)')
CoOpSUN397 = _coop('CoOpSUN397', 'sun397/SUN397',
                   'sun397/split_zhou_SUN397.json', 'SUN397 (397 classes)')
CoOpDTD = _coop('CoOpDTD', 'dtd/images',
                'dtd/split_zhou_DescribableTextures.json',
                'Describable Textures (47 classes)')
CoOpEuroSAT = _coop('CoOpEuroSAT', 'eurosat/2750',
                    'eurosat/split_zhou_EuroSAT.json', 'EuroSAT (10 classes)')
CoOpUCF101 = _coop('CoOpUCF101', 'ucf101/UCF-101-midframes',
                   'ucf101/split_zhou_UCF101.json',
                   'UCF101 middle frames (101 classes)')


@DATASETS.register_module()
class CoOpFGVCAircraft(_LayoutMixin, BaseDataset):
    """FGVC-Aircraft (100 variants) with its official train/val/test split,
    as CoOp reads it: ``variants.txt`` lists the class names (label = line
    number), ``images_variant_<split>.txt`` has ``<image id> <variant>``
    lines, images are ``images/<image id>.jpg``.

    Args:
        data_root (str): The folder holding ``fgvc_aircraft/``.
        split (str): 'train', 'val' or 'test'.
        dataset_dir (str): The dataset folder under ``data_root``.
    """

    def __init__(self,
                 data_root: str = 'data',
                 split: str = 'train',
                 dataset_dir: str = 'fgvc_aircraft',
                 pipeline: Sequence = (),
                 **kwargs) -> None:
        self.split = self.check_split(split)
        self.dataset_dir = dataset_dir
        super().__init__(
            ann_file=osp.join(dataset_dir, f'images_variant_{split}.txt'),
            data_root=data_root,
            data_prefix=osp.join(dataset_dir, 'images'),
            pipeline=pipeline,
            test_mode=split != 'train',
            **kwargs)

    def layout(self) -> str:
        base = f'{self.data_root}/{self.dataset_dir}'
        return (f'{base}/variants.txt (one class name per line)\n'
                f'{base}/images_variant_{{train,val,test}}.txt '
                '("<image id> <variant>" per line)\n'
                f'{base}/images/<image id>.jpg')

    def load_data_list(self) -> List[dict]:
        variants_file = osp.join(osp.dirname(self.ann_file), 'variants.txt')
        self.check_file(variants_file, 'class list')
        self.check_file(self.ann_file, 'split file')
        with open(variants_file) as f:
            classes = [line.strip() for line in f if line.strip()]
        label_of = {name: i for i, name in enumerate(classes)}
        data_list = []
        with open(self.ann_file) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                image_id, variant = line.strip().split(' ', 1)
                if variant not in label_of:
                    raise ValueError(
                        f'{self.ann_file}:{line_no}: variant {variant!r} is '
                        f'not in {variants_file}.')
                data_list.append(
                    dict(
                        img_path=osp.join(self.img_prefix, f'{image_id}.jpg'),
                        gt_label=label_of[variant]))
        self._metainfo['classes'] = tuple(classes)
        self.check_first_image(data_list)
        return data_list
