"""Download a benchmark dataset and lay it out as our configs read it.

    python tools/dataset_converters/prepare_dataset.py eurosat --data-root data
    python tools/dataset_converters/prepare_dataset.py dtd \\
        --split-file ~/Downloads/split_zhou_DescribableTextures.json

torchvision downloads the images (``download=True``) into
``<data-root>/downloads/<name>/``; the image folder is then moved to where
the dataset class of our configs looks for it (``CoOpEuroSAT``:
``<data-root>/eurosat/2750``, see ``tip_adapter_mm/datasets/coop.py``).
Images already in place are not downloaded again.

The train/val/test split:

* ``--split-file PATH``: CoOp's split file (``split_zhou_<Name>.json``, the
  one the papers' numbers use) is copied to where the configs read it.
* A split file already there is used as it is (never overwritten).
* Otherwise a split of our own is written in the same format (per class,
  seeded by ``--seed``: 50 % train, 20 % val, 30 % test, CoOp's proportions),
  with ``SPLIT_NOT_FROM_COOP.txt`` beside it: numbers on it are NOT
  comparable with the papers'.

FGVC-Aircraft comes with its official split (the one CoOp uses), so it
needs no split file. Flowers102 needs CoOp's split file (its class names are
in it; torchvision has only label numbers).

The download is a function (:data:`DownloadSource`; ``--source
MODULE:FUNCTION`` on the command line): tests pass one that writes a few
generated images in torchvision's layout.
"""
import argparse
import importlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Image file extensions listed when a split is made.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff')
#: CoOp's proportions of each class: train, val (the rest is test).
SPLIT_FRACTIONS = (0.5, 0.2)
#: The note written beside a split of our own.
NOTE_FILE = 'SPLIT_NOT_FROM_COOP.txt'


def _class_folder(path: str) -> str:
    """``'<class>/<image>'`` -> ``'<class>'``."""
    return path.split('/')[0]


def _satellite_class(path: str) -> str:
    """EuroSAT: ``'AnnualCrop/AnnualCrop_1.jpg'`` -> ``'Annual Crop'`` (its
    folder names run the words together; prompts read better apart)."""
    return re.sub(r'(?<=[a-z])(?=[A-Z])', ' ', _class_folder(path))


def _pet_breed(path: str) -> str:
    """``'american_bulldog_12.jpg'`` -> ``'american_bulldog'``."""
    return Path(path).stem.rsplit('_', 1)[0]


def _sun_category(path: str) -> str:
    """``'b/bakery/shop/sun_x.jpg'`` -> ``'bakery shop'``."""
    return ' '.join(path.split('/')[1:-1])


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset goes from torchvision's download to our layout.

    Attributes:
        name: The name on the command line (the configs' ``dataset_name``).
        dataset_type: Our dataset class that the configs use; its
            ``IMAGE_DIR`` and ``SPLIT_FILE`` (relative to ``data_root``) say
            where the images and the split go.
        torchvision_class: The ``torchvision.datasets`` class that
            downloads it.
        torchvision_kwargs: Extra arguments of that class.
        downloaded: The folder torchvision leaves, relative to its root,
            moved to ``target`` (or to ``IMAGE_DIR``).
        class_of: Relative image path -> class name, for a split of our
            own; None: only CoOp's split file can label the images.
        ignored_classes: Classes left out of a split of our own (as CoOp
            does).
        target: The folder ``downloaded`` goes to, relative to
            ``data_root``, when it is more than the image folder
            (FGVC-Aircraft: the whole dataset with its split); default
            ``IMAGE_DIR``.
        official_split: The download holds the split the configs read.
    """
    name: str
    dataset_type: str
    torchvision_class: str
    downloaded: str
    class_of: Optional[Callable[[str], str]] = _class_folder
    torchvision_kwargs: Tuple[Tuple[str, object], ...] = ()
    ignored_classes: Tuple[str, ...] = ()
    target: Optional[str] = None
    official_split: bool = False

    def dataset_class(self):
        from mmpretrain.registry import DATASETS

        import tip_adapter_mm  # noqa: F401  (registers the datasets)
        return DATASETS.get(self.dataset_type)

    def image_dir(self) -> str:
        return self.dataset_class().IMAGE_DIR

    def split_file(self) -> str:
        return self.dataset_class().SPLIT_FILE


SPECS: Dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec('eurosat', 'CoOpEuroSAT', 'EuroSAT', 'eurosat/2750',
                    class_of=_satellite_class),
        DatasetSpec('dtd', 'CoOpDTD', 'DTD', 'dtd/dtd/images'),
        DatasetSpec('caltech101', 'CoOpCaltech101', 'Caltech101',
                    'caltech101/101_ObjectCategories',
                    ignored_classes=('BACKGROUND_Google', 'Faces_easy')),
        DatasetSpec('food101', 'CoOpFood101', 'Food101', 'food-101/images'),
        DatasetSpec('oxford_pets', 'CoOpOxfordPets', 'OxfordIIITPet',
                    'oxford-iiit-pet/images', class_of=_pet_breed),
        DatasetSpec('sun397', 'CoOpSUN397', 'SUN397', 'SUN397',
                    class_of=_sun_category),
        DatasetSpec('flowers102', 'CoOpFlowers102', 'Flowers102',
                    'flowers-102/jpg', class_of=None),
        DatasetSpec('fgvc_aircraft', 'CoOpFGVCAircraft', 'FGVCAircraft',
                    'fgvc-aircraft-2013b/data', class_of=None,
                    torchvision_kwargs=(('split', 'trainval'), ),
                    target='fgvc_aircraft', official_split=True),
    )
}

#: ``source(spec, download_root)`` leaves torchvision's layout of ``spec``
#: under ``download_root`` (``spec.downloaded`` must exist after it).
DownloadSource = Callable[[DatasetSpec, Path], None]


def torchvision_download(spec: DatasetSpec, download_root: Path) -> None:
    """Download ``spec`` with its torchvision class (``download=True``)."""
    import torchvision.datasets
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    cls(root=str(download_root), download=True,
        **dict(spec.torchvision_kwargs))


@dataclass
class Prepared:
    """Where a prepared dataset lies.

    Attributes:
        image_dir: The images, as the configs read them.
        split_file: The split file the configs read (None: FGVC-Aircraft's
            official split files beside the images).
        split_origin: ``'official'``, ``'coop'`` (copied from
            ``--split-file``), ``'existing'`` (was already there) or
            ``'own'`` (written here: not comparable with the papers).
    """
    image_dir: Path
    split_file: Optional[Path]
    split_origin: str


def list_images(folder: Path) -> List[str]:
    """Image paths under ``folder``, relative, ``/``-separated, sorted."""
    paths = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                rel = Path(dirpath, name).relative_to(folder)
                paths.append(rel.as_posix())
    return sorted(paths)


def make_split(paths: Sequence[str], class_of: Callable[[str], str],
               seed: int, ignored: Sequence[str] = ()) -> Dict[str, list]:
    """A seeded per-class split in CoOp's format.

    Args:
        paths: Relative image paths (N).
        class_of: Path -> class name.
        seed: Seed of the shuffle inside each class.
        ignored: Classes left out.

    Returns:
        ``{'train'|'val'|'test': [[path, label, class name], ...]}``;
        labels number the sorted class names 0..C-1; of each class's n
        images, ``round(0.5 n)`` go to train, ``max(1, round(0.2 n))`` to
        val and the rest to test.
    """
    by_class: Dict[str, List[str]] = {}
    for path in sorted(paths):
        name = class_of(path)
        if name not in ignored:
            by_class.setdefault(name, []).append(path)
    if not by_class:
        raise ValueError('No images to split.')
    rng = np.random.default_rng(seed)
    splits: Dict[str, list] = {'train': [], 'val': [], 'test': []}
    for label, name in enumerate(sorted(by_class)):
        items = by_class[name]
        if len(items) < 3:
            raise ValueError(
                f'Class {name!r} has {len(items)} image(s); a train/val/test '
                'split needs at least 3.')
        order = rng.permutation(len(items))
        n_train = int(round(SPLIT_FRACTIONS[0] * len(items)))
        n_val = max(1, int(round(SPLIT_FRACTIONS[1] * len(items))))
        n_train = min(n_train, len(items) - n_val - 1)
        for rank, index in enumerate(order):
            split = ('train' if rank < n_train else
                     'val' if rank < n_train + n_val else 'test')
            splits[split].append([items[index], label, name])
    return splits


def check_split_file(path: Path, image_dir: Path) -> Dict[str, list]:
    """Read a CoOp split file and check its images exist under
    ``image_dir``; errors name the file and the first missing images."""
    try:
        with open(path) as f:
            splits = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(
            f'{path}: not a readable split file ({err}); expected CoOp\'s '
            'JSON {"train"|"val"|"test": [[path, label, classname], ...]}.'
        ) from err
    missing_keys = {'train', 'val', 'test'} - set(splits)
    if not isinstance(splits, dict) or missing_keys:
        raise ValueError(f'{path}: expected the keys train, val and test; '
                         f'missing {sorted(missing_keys)}.')
    missing = [item[0] for split in ('train', 'val', 'test')
               for item in splits[split]
               if not (image_dir / item[0]).is_file()]
    if missing:
        raise FileNotFoundError(
            f'{path} lists {len(missing)} image(s) not under {image_dir}, '
            f'e.g. {missing[:3]}. Is it the split file of this dataset?')
    return splits


def note_text(spec: DatasetSpec, split_file: Path, seed: int) -> str:
    return (
        f'{split_file.name} here was written by '
        'tools/dataset_converters/prepare_dataset.py (seed '
        f'{seed}), not taken from CoOp: CoOp\'s split file for '
        f'{spec.name} was not given. Numbers measured on this split are '
        'NOT comparable with the papers\' (they use CoOp\'s split). For '
        'comparable numbers, delete this file and '
        f'{split_file.name}, and run the tool again with --split-file '
        '<CoOp\'s file> (CoOp\'s DATASETS.md says where to get it).\n')


def place_images(spec: DatasetSpec, data_root: Path, source: DownloadSource,
                 log: Callable[[str], None]) -> Path:
    """Download ``spec`` with ``source`` unless its images are in place;
    move torchvision's folder to where the configs read it."""
    target = data_root / (spec.target or spec.image_dir())
    if target.is_dir() and any(target.iterdir()):
        log(f'{spec.name}: using the data already in {target}')
        return target
    download_root = data_root / 'downloads' / spec.name
    log(f'{spec.name}: downloading with torchvision.datasets.'
        f'{spec.torchvision_class} into {download_root}')
    download_root.mkdir(parents=True, exist_ok=True)
    source(spec, download_root)
    downloaded = download_root / spec.downloaded
    if not downloaded.is_dir():
        raise FileNotFoundError(
            f'{spec.name}: the download left no folder {downloaded} '
            f'(expected torchvision.datasets.{spec.torchvision_class}\'s '
            'layout).')
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        target.rmdir()  # empty (checked above)
    shutil.move(str(downloaded), str(target))
    log(f'{spec.name}: moved {downloaded} to {target} (the rest of the '
        f'download stays in {download_root}; delete it to save space)')
    return target


def prepare(name: str,
            data_root: str = 'data',
            split_file: Optional[str] = None,
            seed: int = 1,
            source: DownloadSource = torchvision_download,
            log: Callable[[str], None] = print) -> Prepared:
    """Download dataset ``name`` and write its split as the configs read it.

    Args:
        name: A key of :data:`SPECS` (``'eurosat'``, ``'dtd'``, ...).
        data_root: The configs' ``data_root``.
        split_file: CoOp's split file for the dataset, copied into place.
        seed: The seed of a split of our own (when there is no CoOp file).
        source: Makes torchvision's layout under a folder
            (:data:`DownloadSource`).
        log: Where progress lines go.

    Returns:
        :class:`Prepared`.
    """
    if name not in SPECS:
        raise KeyError(f'Unknown dataset {name!r}; this tool prepares '
                       f'{sorted(SPECS)}.')
    spec = SPECS[name]
    root = Path(data_root)
    if spec.official_split and split_file:
        raise ValueError(f'{name} uses its official split (downloaded with '
                         'it); --split-file does not apply.')
    target_split = None if spec.official_split else root / spec.split_file()
    if (target_split is not None and not split_file
            and not target_split.is_file() and spec.class_of is None):
        raise FileNotFoundError(
            f'{name}: no split file at {target_split} and none given; its '
            f'images carry no class names, so pass CoOp\'s '
            f'{target_split.name} with --split-file.')
    images = place_images(spec, root, source, log)
    if target_split is None:
        return Prepared(images, None, 'official')
    image_dir = root / spec.image_dir()
    if split_file:
        check_split_file(Path(split_file), image_dir)
        if target_split.is_file():
            if target_split.read_bytes() != Path(split_file).read_bytes():
                raise FileExistsError(
                    f'{target_split} exists and differs from {split_file}; '
                    'it is not overwritten (delete it first).')
        else:
            shutil.copyfile(split_file, target_split)
        (target_split.parent / NOTE_FILE).unlink(missing_ok=True)
        log(f'{name}: CoOp\'s split {target_split}')
        return Prepared(image_dir, target_split, 'coop')
    if target_split.is_file():
        check_split_file(target_split, image_dir)
        own = (target_split.parent / NOTE_FILE).is_file()
        log(f'{name}: using the split already in {target_split}' +
            (f' (NOT CoOp\'s: see {target_split.parent / NOTE_FILE})'
             if own else ''))
        return Prepared(image_dir, target_split, 'existing')
    splits = make_split(list_images(image_dir), spec.class_of, seed,
                        spec.ignored_classes)
    with open(target_split, 'w') as f:
        json.dump(splits, f)
    note = target_split.parent / NOTE_FILE
    note.write_text(note_text(spec, target_split, seed))
    sizes = ', '.join(f'{k} {len(v)}' for k, v in splits.items())
    log(f'{name}: wrote a split of our own (seed {seed}; {sizes}) to '
        f'{target_split}. It is NOT CoOp\'s split: numbers on it are not '
        f'comparable with the papers\' (see {note}).')
    return Prepared(image_dir, target_split, 'own')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Download a dataset with torchvision into the layout '
        'of our configs, with CoOp\'s split file or a seeded one.')
    parser.add_argument('name', choices=sorted(SPECS))
    parser.add_argument('--data-root', default='data',
                        help='the configs\' data_root (default: data)')
    parser.add_argument('--split-file',
                        help='CoOp\'s split file (split_zhou_<Name>.json)')
    parser.add_argument('--seed', type=int, default=1,
                        help='seed of a split of our own (default: 1)')
    parser.add_argument(
        '--source', metavar='MODULE:FUNCTION',
        help='instead of torchvision\'s download: a function (spec, '
        'folder) that lays out torchvision\'s files of the dataset under '
        'folder, e.g. copied from a local mirror')
    return parser.parse_args(argv)


def load_source(name: str) -> DownloadSource:
    """``'module:function'`` -> the function (module on ``sys.path``)."""
    module_name, _, function = name.partition(':')
    if not module_name or not function:
        raise ValueError(f'--source {name!r}: expected MODULE:FUNCTION.')
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f'--source {name!r}: cannot import {module_name!r} '
                         f'({err}); put its folder on PYTHONPATH.') from err
    if not callable(getattr(module, function, None)):
        raise ValueError(f'--source {name!r}: {module.__file__} has no '
                         f'function {function!r}.')
    return getattr(module, function)


def main(argv: Optional[Sequence[str]] = None,
         source: DownloadSource = torchvision_download) -> Prepared:
    args = parse_args(argv)
    if args.source:
        source = load_source(args.source)
    prepared = prepare(args.name, args.data_root, args.split_file,
                       args.seed, source)
    command = f'python tools/test.py configs/tip_{args.name}_16shot.py'
    if Path(args.data_root) != Path('data'):
        root = args.data_root
        command += (
            ' --cfg-options '
            f'fewshot_dataloader.dataset.dataset.data_root={root} '
            f'val_dataloader.dataset.data_root={root} '
            f'test_dataloader.dataset.data_root={root}')
    print(f'{args.name}: ready. Tip-Adapter on it: {command}')
    return prepared


if __name__ == '__main__':
    try:
        main()
    except (KeyError, ValueError, OSError) as err:
        sys.exit(f'prepare_dataset.py: {err}')
