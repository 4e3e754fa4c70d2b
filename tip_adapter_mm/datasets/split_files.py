"""Few-shot split files: the exact shots of a (dataset, K, seed) as a file.

Our format is a JSON object (one sample per line, so files diff well)::

    {
      "format": "tip-adapter-mm few-shot split",
      "format_version": 1,
      "dataset_name": "dtd",            # the config's dataset_name, or null
      "dataset_type": "CoOpDTD",        # the wrapped dataset's class
      "num_shots": 16,
      "seed": 1,
      "source": "...",                  # how the shots were drawn
      "classes": ["banded", ...],       # class names in label order
      "samples": [
        ["banded/banded_0002.jpg", 0],  # [path, label], in shot order
        ...
      ],
      "sha256": "<hex>"
    }

Paths are relative to the wrapped dataset's image prefix
(:func:`image_prefix`: ``data_root`` joined with the image folder), with
``/`` separators, so a file written on one machine is read on another whose
data lives elsewhere. ``sha256`` is the SHA-256 of the canonical content
(:func:`canonical_bytes`: every other key, sorted, compact JSON, UTF-8):
an edited or damaged file is refused, naming it.

Other codebases' files: :func:`read_coop_fewshot_pickle` reads the
``split_fewshot/shot_{K}-seed_{S}.pkl`` files of CoOp / Dassl (used by CoOp,
CoCoOp, Tip-Adapter, APE, GDA, LP++, ...) without Dassl installed, and
:func:`convert_coop_split` checks them against a dataset and turns them into
a :class:`SplitFile`.
"""
import hashlib
import json
import os
import os.path as osp
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.dataset import BaseDataset

from .few_shot import dataset_labels

FORMAT = 'tip-adapter-mm few-shot split'
FORMAT_VERSION = 1
DIGEST_KEY = 'sha256'
#: Keys of the file, in the order they are written (samples and digest
#: last).
HEADER_KEYS = ('format', 'format_version', 'dataset_name', 'dataset_type',
               'num_shots', 'seed', 'source', 'classes')

#: CoOp's few-shot pickle names: ``shot_{K}-seed_{S}.pkl``.
COOP_PICKLE_NAME = re.compile(r'^shot_(\d+)-seed_(\d+)\.pkl$')


@dataclass
class SplitFile:
    """The content of a split file.

    Attributes:
        samples: ``[(relative path, label), ...]`` in shot order, S items.
        classes: Class names in label order (empty if the dataset has
            none).
        num_shots: K, images per class.
        seed: The seed of the draw (for CoOp files: the ``seed`` of the
            file name).
        dataset_name: The config's ``dataset_name`` (e.g. ``'dtd'``), or
            None.
        dataset_type: The wrapped dataset's class name (informative).
        source: How the shots were drawn, for people reading the file.
    """
    samples: List[Tuple[str, int]]
    classes: List[str]
    num_shots: int
    seed: int
    dataset_name: Optional[str] = None
    dataset_type: Optional[str] = None
    source: str = ''
    format_version: int = field(default=FORMAT_VERSION)

    def header(self) -> Dict[str, Any]:
        return dict(
            format=FORMAT,
            format_version=self.format_version,
            dataset_name=self.dataset_name,
            dataset_type=self.dataset_type,
            num_shots=self.num_shots,
            seed=self.seed,
            source=self.source,
            classes=list(self.classes))

    def content(self) -> Dict[str, Any]:
        """Everything the digest covers (all keys but ``sha256``)."""
        return dict(self.header(),
                    samples=[[p, int(lbl)] for p, lbl in self.samples])

    def digest(self) -> str:
        """SHA-256 (hex) of :func:`canonical_bytes` of the content."""
        return hashlib.sha256(canonical_bytes(self.content())).hexdigest()

    def to_text(self) -> str:
        """The file's text: JSON, a header, one sample per line, digest."""
        lines = ['{']
        for key, value in self.header().items():
            lines.append(f'  {json.dumps(key)}: '
                         f'{json.dumps(value, ensure_ascii=False)},')
        samples = [
            '    ' + json.dumps([p, int(lbl)], ensure_ascii=False)
            for p, lbl in self.samples
        ]
        lines.append('  "samples": [')
        lines.append(',\n'.join(samples))
        lines.append('  ],')
        lines.append(f'  {json.dumps(DIGEST_KEY)}: "{self.digest()}"')
        lines.append('}')
        return '\n'.join(line for line in lines if line) + '\n'


def canonical_bytes(content: Dict[str, Any]) -> bytes:
    """The bytes the digest is taken of: ``content`` as compact JSON with
    sorted keys, UTF-8."""
    return json.dumps(
        content, sort_keys=True, separators=(',', ':'),
        ensure_ascii=False).encode('utf-8')


# -- paths ------------------------------------------------------------------
def image_prefix(dataset: BaseDataset) -> str:
    """The folder a dataset's image paths are relative to in split files:
    its image prefix (``data_root`` joined with ``data_prefix['img_path']``)
    or, without one, its ``data_root``; ``''`` if it has neither."""
    prefix = getattr(dataset, 'data_prefix', None) or {}
    prefix = prefix.get('img_path') if isinstance(prefix, dict) else None
    return prefix or getattr(dataset, 'data_root', None) or ''


def _parts(path: str) -> List[str]:
    """The components of a path written with ``/`` or ``\\``."""
    return [p for p in re.split(r'[\\/]+', path) if p not in ('', '.')]


def relative_path(img_path: str, prefix: str) -> str:
    """``img_path`` relative to ``prefix``, with ``/`` separators.

    Raises:
        ValueError: ``img_path`` is not under ``prefix``.
    """
    if not prefix:
        return '/'.join(_parts(img_path))
    head = prefix.rstrip('/\\')
    if img_path.startswith(head) and img_path[len(head):len(head) + 1] in (
            '/', '\\'):  # the usual case, fast: the dataset joined them
        parts = _parts(img_path[len(head) + 1:])
    else:
        parts = _parts(
            osp.relpath(osp.abspath(img_path), osp.abspath(prefix)))
    if not parts or '..' in parts:
        raise ValueError(
            f'Image {img_path!r} is not under the dataset\'s image folder '
            f'{prefix!r}; split files store paths relative to it.')
    return '/'.join(parts)


def dataset_relative_paths(dataset: BaseDataset) -> List[str]:
    """The relative path (:func:`relative_path` to :func:`image_prefix`) of
    every sample of ``dataset``, in its order."""
    prefix = image_prefix(dataset)
    paths = []
    for i in range(len(dataset)):
        img_path = dataset.get_data_info(i).get('img_path')
        if img_path is None:
            raise ValueError(
                f'Sample {i} of {type(dataset).__name__} has no img_path; '
                'split files identify samples by their image path.')
        paths.append(relative_path(img_path, prefix))
    return paths


def path_index(paths: Sequence[str], dataset: BaseDataset
               ) -> Dict[str, int]:
    """Relative path -> index; the dataset must not list a path twice."""
    index: Dict[str, int] = {}
    for i, path in enumerate(paths):
        if index.setdefault(path, i) != i:
            raise ValueError(
                f'{type(dataset).__name__} lists image {path!r} twice '
                f'(samples {index[path]} and {i}); split files need '
                'distinct paths.')
    return index


def _class_label(classes: Sequence[str], label: int) -> str:
    if 0 <= label < len(classes):
        return f'{label} ({classes[label]!r})'
    return str(label)


# -- our files --------------------------------------------------------------
def split_file_of(dataset,
                  dataset_name: Optional[str] = None,
                  source: Optional[str] = None) -> SplitFile:
    """The :class:`SplitFile` of a :class:`FewShotDataset`'s shots."""
    base = dataset.dataset
    paths = dataset_relative_paths(base)
    labels = dataset.get_gt_labels()
    classes = [str(c) for c in (base.metainfo.get('classes') or ())]
    if source is None:
        source = getattr(dataset, 'source', None) or (
            f'FewShotDataset(num_shots={dataset.num_shots}, '
            f'seed={dataset.seed}, holdout={dataset.holdout})')
    return SplitFile(
        samples=[(paths[int(i)], int(lbl))
                 for i, lbl in zip(dataset.indices, labels)],
        classes=classes,
        num_shots=int(dataset.num_shots),
        seed=int(dataset.seed),
        dataset_name=dataset_name,
        dataset_type=type(base).__name__,
        source=source)


def write_split_file(split: SplitFile, path: str) -> str:
    """Write ``split`` to ``path``; an existing file is kept if it holds the
    same content.

    Returns:
        str: The digest.

    Raises:
        FileExistsError: ``path`` exists with different (or unreadable)
            content; it is never overwritten.
    """
    if osp.exists(path):
        try:
            existing = load_split_file(path)
        except (ValueError, OSError) as err:
            raise FileExistsError(
                f'{path} exists and is not a readable split file ({err}); '
                'it is not overwritten: choose another path.') from err
        if existing.content() != split.content():
            raise FileExistsError(
                f'{path} exists with different shots or metadata (digest '
                f'{existing.digest()[:16]}, new {split.digest()[:16]}); it '
                'is not overwritten: choose another path or delete it.')
        return existing.digest()
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(split.to_text())
    os.replace(tmp, path)
    return split.digest()


def save_split_file(dataset,
                    path: str,
                    dataset_name: Optional[str] = None) -> SplitFile:
    """Write the shots of a :class:`FewShotDataset` to ``path``.

    Args:
        dataset (FewShotDataset): The few-shot set (drawn with a seed or
            read from a split file).
        path (str): The JSON file to write.
        dataset_name (str, optional): The config's ``dataset_name``,
            recorded in the file.

    Returns:
        SplitFile: What was written.

    Raises:
        FileExistsError: ``path`` exists with different content.
    """
    split = split_file_of(dataset, dataset_name)
    write_split_file(split, path)
    return split


def _require(data: dict, key: str, kind: type, path: str):
    """``data[key]``, which must be a ``kind`` (bool is not an int)."""
    if key not in data:
        raise ValueError(f'Split file {path}: missing key {key!r}.')
    value = data[key]
    if not isinstance(value, kind) or (kind is int
                                       and isinstance(value, bool)):
        raise ValueError(f'Split file {path}: {key!r} must be '
                         f'{kind.__name__}, got {value!r}.')
    return value


def load_split_file(path: str) -> SplitFile:
    """Read and verify a split file written by :func:`save_split_file`.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not valid JSON, not this format, a version this code
            does not read, malformed samples, or a digest that does not
            match the content (the file was edited or damaged); the message
            names the file.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Split file {path!r} not found.')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'Split file {path} is not valid JSON ({err}); it '
                         'is damaged or not a split file.') from err
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise ValueError(f'{path} is not a split file of this project '
                         f'(expected "format": {FORMAT!r}). CoOp\'s '
                         '"shot_K-seed_S.pkl" files are converted with '
                         '"tools/split_file.py convert".')
    version = _require(data, 'format_version', int, path)
    if version != FORMAT_VERSION:
        raise ValueError(f'Split file {path} has format_version {version}; '
                         f'this code reads version {FORMAT_VERSION}.')
    stored = _require(data, DIGEST_KEY, str, path)
    content = {k: v for k, v in data.items() if k != DIGEST_KEY}
    actual = hashlib.sha256(canonical_bytes(content)).hexdigest()
    if actual != stored:
        raise ValueError(
            f'Split file {path} is damaged or was edited: its content has '
            f'SHA-256 {actual}, the file records {stored}. Export it again '
            '(tools/split_file.py export) instead of editing it.')
    samples = _require(data, 'samples', list, path)
    for i, item in enumerate(samples):
        if not (isinstance(item, list) and len(item) == 2
                and isinstance(item[0], str) and isinstance(item[1], int)
                and not isinstance(item[1], bool) and item[1] >= 0):
            raise ValueError(f'Split file {path}: sample {i} is {item!r}, '
                             'expected ["relative/path", label >= 0].')
    classes = _require(data, 'classes', list, path)
    extra = set(content) - set(HEADER_KEYS) - {'samples'}
    if extra:
        raise ValueError(f'Split file {path}: unknown keys {sorted(extra)}.')
    return SplitFile(
        samples=[(p, int(lbl)) for p, lbl in samples],
        classes=[str(c) for c in classes],
        num_shots=_require(data, 'num_shots', int, path),
        seed=_require(data, 'seed', int, path),
        dataset_name=data.get('dataset_name'),
        dataset_type=data.get('dataset_type'),
        source=str(data.get('source') or ''),
        format_version=version)


def check_classes(file_classes: Sequence[str], dataset: BaseDataset,
                  what: str) -> None:
    """Raise if the class names of a split differ from the dataset's."""
    ours = [str(c) for c in (dataset.metainfo.get('classes') or ())]
    theirs = [str(c) for c in file_classes]
    if ours == theirs:
        return
    if len(ours) != len(theirs):
        raise ValueError(
            f'{what} has {len(theirs)} classes, {type(dataset).__name__} '
            f'has {len(ours)}: the split belongs to another dataset.')
    first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    raise ValueError(
        f'{what} names class {first} {theirs[first]!r}, '
        f'{type(dataset).__name__} names it {ours[first]!r} (first of '
        f'{sum(a != b for a, b in zip(ours, theirs))} differences): the '
        'split belongs to another dataset or class order.')


def split_indices(split: SplitFile, dataset: BaseDataset,
                  what: str) -> np.ndarray:
    """The indices in ``dataset`` of the split's samples, in file order.

    Args:
        split: The split file's content.
        dataset: The wrapped (full) dataset.
        what: How to name the split in errors (e.g. the file path).

    Returns:
        np.ndarray: ``(S,)`` int64 indices.

    Raises:
        ValueError: class names differ, a path is not in the dataset, or a
            label disagrees with the dataset's (the message names them).
    """
    check_classes(split.classes, dataset, what)
    paths = dataset_relative_paths(dataset)
    index = path_index(paths, dataset)
    labels = dataset_labels(dataset)
    classes = split.classes
    picked = []
    for path, label in split.samples:
        key = '/'.join(_parts(path))
        if key not in index:
            example = f' (e.g. {paths[0]!r})' if paths else ''
            raise ValueError(
                f'{what}: image {path!r} is not in {type(dataset).__name__}'
                f' (image folder {image_prefix(dataset)!r}; paths are '
                f'relative to it{example}).')
        i = index[key]
        if int(labels[i]) != int(label):
            raise ValueError(
                f'{what}: image {path!r} has label '
                f'{_class_label(classes, int(label))} in the split, '
                f'{_class_label(classes, int(labels[i]))} in '
                f'{type(dataset).__name__}.')
        picked.append(i)
    return np.asarray(picked, dtype=np.int64)


# -- CoOp / Dassl pickles ---------------------------------------------------
#: Where Dassl defines ``Datum`` (the one class a CoOp pickle may name).
DATUM_CLASS = ('dassl.data.datasets.base_dataset', 'Datum')


class Datum:
    """A stand-in for Dassl's ``Datum`` (image path, label, domain, class
    name) that unpickling fills in; it runs no code of Dassl's."""

    def __init__(self, impath: str = '', label: int = 0, domain: int = 0,
                 classname: str = '') -> None:
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f'Datum state must be a dict, got {type(state).__name__}.')
        unknown = set(state) - {'_impath', '_label', '_domain', '_classname'}
        if unknown:
            raise pickle.UnpicklingError(
                f'Datum state has unexpected attributes {sorted(unknown)}.')
        self._impath = state.get('_impath', '')
        self._label = state.get('_label', 0)
        self._domain = state.get('_domain', 0)
        self._classname = state.get('_classname', '')

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname


class DatumOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and Dassl ``Datum`` objects (as the local
    :class:`Datum`) and refuses every other global, so a pickle cannot run
    code."""

    def find_class(self, module: str, name: str):
        if (module, name) == DATUM_CLASS:
            return Datum
        raise pickle.UnpicklingError(
            f'refusing to load {module}.{name}: a CoOp few-shot pickle '
            f'holds only {".".join(DATUM_CLASS)} objects.')


def read_coop_fewshot_pickle(path: str) -> Dict[str, List[Datum]]:
    """Read a CoOp/Dassl ``split_fewshot/shot_{K}-seed_{S}.pkl``.

    The file is a pickled dict: ``'train'`` (the K shots of every class)
    and, except for ImageNet, ``'val'`` (min(K, 4) per class of the val
    split), each a list of Dassl ``Datum`` (``impath`` on the authors'
    machine, ``label``, ``classname``). Read without Dassl: only ``Datum``
    may be named by the pickle.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The pickle names anything else, or is not such a dict.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'CoOp few-shot pickle {path!r} not found.')
    try:
        with open(path, 'rb') as f:
            data = DatumOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError,
            TypeError, ValueError, IndexError, KeyError) as err:
        raise ValueError(f'{path} is not a CoOp few-shot pickle: {err}') \
            from err
    if not isinstance(data, dict) or 'train' not in data:
        raise ValueError(
            f"{path} is not a CoOp few-shot pickle: expected a dict with a "
            f"'train' list, got "
            + (f'keys {sorted(map(str, data))}' if isinstance(data, dict)
               else type(data).__name__) + '.')
    for key, items in data.items():
        if not isinstance(items, list) or not all(
                isinstance(d, Datum) for d in items):
            raise ValueError(f'{path}: {key!r} must be a list of Datum.')
        for d in items:
            if not isinstance(d.impath, str) or not isinstance(
                    d.label, int) or isinstance(d.label, bool):
                raise ValueError(
                    f'{path}: {key!r} holds a Datum with impath '
                    f'{d.impath!r} and label {d.label!r}; expected a str '
                    'and an int.')
    return data


def coop_pickle_shots_seed(path: str) -> Tuple[Optional[int],
                                               Optional[int]]:
    """``(K, S)`` from a ``shot_{K}-seed_{S}.pkl`` file name, else
    ``(None, None)``."""
    found = COOP_PICKLE_NAME.match(osp.basename(path))
    return (int(found[1]), int(found[2])) if found else (None, None)


def match_foreign_path(impath: str, index: Dict[str, int]) -> Optional[str]:
    """The longest tail of ``impath`` (a path on another machine) that is a
    relative path of the dataset (a key of ``index``), or None."""
    parts = _parts(impath)
    for start in range(len(parts)):
        tail = '/'.join(parts[start:])
        if tail in index:
            return tail
    return None


def _resolve(given: Optional[int], from_name: Optional[int], what: str,
             path: str) -> int:
    if given is not None and from_name is not None and given != from_name:
        raise ValueError(f'{what}={given} was given but the file name '
                         f'{osp.basename(path)} says {from_name}.')
    value = given if given is not None else from_name
    if value is None:
        raise ValueError(f'{osp.basename(path)} is not named '
                         f'shot_K-seed_S.pkl: give {what} explicitly.')
    return int(value)


def convert_coop_split(pkl_path: str,
                       dataset: BaseDataset,
                       num_shots: Optional[int] = None,
                       seed: Optional[int] = None,
                       dataset_name: Optional[str] = None,
                       check_class_names: bool = True) -> SplitFile:
    """A CoOp few-shot pickle's ``'train'`` shots as a :class:`SplitFile`,
    checked against ``dataset`` (the full train split the shots were drawn
    from).

    Each ``impath`` (absolute, on the authors' machine) becomes the longest
    tail of it that is a relative path of ``dataset``
    (:func:`match_foreign_path`). The file's order is kept, and so are
    repeated images (Dassl repeats images of a class with fewer than K).

    Args:
        pkl_path: The ``shot_{K}-seed_{S}.pkl`` file.
        dataset: The wrapped dataset (e.g. ``CoOpDTD(split='train')``).
        num_shots, seed: K and the seed; read from the file name when
            None (an error if it does not say, or says otherwise).
        dataset_name: Recorded in the file.
        check_class_names: Require each Datum's class name to be the
            dataset's name of its label.

    Raises:
        ValueError: an image matches no path of the dataset, a label or
            class name disagrees (naming the image and both values), or
            the file name disagrees with ``num_shots``/``seed``.
    """
    k_name, s_name = coop_pickle_shots_seed(pkl_path)
    num_shots = _resolve(num_shots, k_name, 'num_shots', pkl_path)
    seed = _resolve(seed, s_name, 'seed', pkl_path)
    shots = read_coop_fewshot_pickle(pkl_path)['train']
    paths = dataset_relative_paths(dataset)
    index = path_index(paths, dataset)
    labels = dataset_labels(dataset)
    classes = [str(c) for c in (dataset.metainfo.get('classes') or ())]
    samples = []
    for datum in shots:
        rel = match_foreign_path(datum.impath, index)
        if rel is None:
            example = f', e.g. {paths[0]!r}' if paths else ''
            raise ValueError(
                f'{pkl_path}: image {datum.impath!r} matches no image of '
                f'{type(dataset).__name__} (no tail of it is a path '
                f'relative to {image_prefix(dataset)!r}{example}).')
        ours = int(labels[index[rel]])
        if ours != datum.label:
            raise ValueError(
                f'{pkl_path}: image {datum.impath!r} has label '
                f'{datum.label} ({datum.classname!r}) in the pickle, '
                f'{_class_label(classes, ours)} in '
                f'{type(dataset).__name__}.')
        if check_class_names and classes and \
                classes[ours] != datum.classname:
            raise ValueError(
                f'{pkl_path}: label {ours} is called {datum.classname!r} in '
                f'the pickle, {classes[ours]!r} in '
                f'{type(dataset).__name__}.')
        samples.append((rel, ours))
    return SplitFile(
        samples=samples,
        classes=classes,
        num_shots=num_shots,
        seed=seed,
        dataset_name=dataset_name,
        dataset_type=type(dataset).__name__,
        source=f'CoOp/Dassl few-shot pickle {osp.basename(pkl_path)} '
        "('train' list)")
