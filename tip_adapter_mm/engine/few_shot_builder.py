"""The one owner of a run's stored features and of fitting its head."""
import copy
import os.path as osp
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.dist import barrier, broadcast_object_list, get_dist_info
from mmengine.model import is_model_wrapper
from torch.utils.data import DataLoader

from mmpretrain.registry import DATASETS
from ..datasets.class_names import check_class_names
from ..datasets.few_shot import holdout_indices
from ..datasets.stored_features import StoredFeaturesDataset
from ..structures import EncodedFeatures
from ..utils.cpu import auto_loader_cfg
from .feature_extraction import (dataset_fingerprint, extract_features,
                                 model_device, precision_dtype)
from .feature_store import FeatureStore, describe_checkpoint, read_features

#: Model config keys that determine the visual features.
ENCODER_KEYS = ('backbone', 'neck', 'second_backbone', 'second_neck',
                'second_mean', 'second_std', 'data_preprocessor')

#: Names of the support-set entries in the feature store.
SUPPORT_VIEWS = 'support_views'

#: What selects hyperparameters and the epoch (``few_shot_cfg.protocol``):
#: protocol -> (split it reads, images per class of that split or None for
#: all of them, as a function of the shots K).
PROTOCOLS: Dict[str, Tuple[Optional[str], Optional[Callable[[int], int]]]] = {
    'val': ('val', None),  # the whole val split
    'fewshot_val': ('val', lambda k: min(k, 4)),  # CoOp / Dassl
    'kshot_val': ('val', lambda k: k),  # LP++, ProLIP
    'none': (None, None),  # validation-free recipes, last epoch
    # NOT A VALID PROTOCOL: the public reference code's search on test.
    'reference_test': ('test', None),
}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if is_model_wrapper(model) else model


def few_shot_builder(runner, user: str) -> 'FewShotBuilder':
    """The runner's :class:`FewShotBuilder`, or an error naming ``user``."""
    builder = getattr(runner, 'few_shot', None)
    if not isinstance(builder, FewShotBuilder):
        raise TypeError(f"{user} needs runner_type = 'FewShotRunner' in the "
                        f'config (it owns the stored features), got '
                        f'{type(runner).__name__}.')
    return builder


def _describe_weights(module_cfg: Any) -> Any:
    """A module config with each local weight file (``pretrained``,
    ``init_cfg.checkpoint``) replaced by its size and mtime."""
    if not isinstance(module_cfg, dict):
        return module_cfg
    module_cfg = dict(module_cfg)
    if 'pretrained' in module_cfg:
        module_cfg['pretrained'] = describe_checkpoint(
            module_cfg['pretrained'])
    init_cfg = module_cfg.get('init_cfg')
    if init_cfg is not None:
        init_cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
        module_cfg['init_cfg'] = [
            dict(c, checkpoint=describe_checkpoint(c['checkpoint']))
            if isinstance(c, dict) and 'checkpoint' in c else c
            for c in init_cfgs
        ]
    return module_cfg


def encoder_description(model_cfg: Optional[dict],
                        precision: str = 'fp32') -> dict:
    """What determines the visual features besides the data: the configs of
    the visual encoder(s) and of the preprocessor, each local weight file
    with its size and mtime, and the precision they encode in
    (``few_shot_cfg.precision``: features of different precisions are
    different entries). The head and the text tower are not part of it:
    every method on the same encoders shares the same features."""
    precision_dtype(precision)  # a clear error for an unknown one
    model_cfg = copy.deepcopy(dict(model_cfg or {}))
    description = {
        key: _describe_weights(model_cfg.get(key))
        for key in ENCODER_KEYS if model_cfg.get(key) is not None
    }
    description.setdefault('data_preprocessor', None)
    description['precision'] = precision
    return description


def encoding_loader_cfg(loader_cfg: dict, pin_memory: bool,
                        prefetch_factor: int = 4) -> dict:
    """A config's image loader set up for one encoding pass: in order
    (``DefaultSampler(shuffle=False)``), ``pin_memory`` as given (True
    when the encoders run on a CUDA device, so that the copies to it are
    asynchronous), and with workers (``num_workers > 0``) each preparing
    ``prefetch_factor`` batches ahead (unless the config says how many);
    the workers end with the pass (``persistent_workers=False``: the loader
    is read once). ``num_workers='auto'`` is resolved for this machine
    (:func:`~tip_adapter_mm.utils.cpu.auto_loader_cfg`)."""
    cfg = dict(auto_loader_cfg(loader_cfg),
               sampler=dict(type='DefaultSampler', shuffle=False),
               pin_memory=bool(pin_memory))
    if int(cfg.get('num_workers', 0)) > 0:
        cfg.setdefault('prefetch_factor', prefetch_factor)
        cfg['persistent_workers'] = False
    else:
        cfg.pop('prefetch_factor', None)
        cfg['persistent_workers'] = False
    return cfg


class FewShotBuilder:
    """Encodes what a run needs, once, and fits the run's head.

    :class:`FewShotRunner` owns one (``runner.few_shot``); the hooks and the
    loops ask it for what they need:

    * :meth:`build_cache` builds the zero-shot weights (heads with a
      zero-shot term) and fits the head on the ``augment_epoch`` augmented
      views of the few-shot set (``fewshot_dataloader`` of the config);
    * :meth:`split_features` gives the features of ``val`` or ``test``;
    * :meth:`features_dataloader` gives the val and test loops a loader over
      those features, so that they never run the encoders.

    Everything encoded goes through the :class:`FeatureStore` under
    ``feature_dir``: the views are keyed by the encoders, the few-shot set
    (dataset, shots, seed, images), the transforms, the number of views and
    their seed; a split by the encoders, its dataset config and its images.
    Every method, shot count, seed and run that asks for the same thing
    reads the same entry, and a sweep encodes each test image once per
    encoder. On several ranks, each encodes its share; rank 0 writes.

    Args:
        augment_epoch (int): Augmented views of each few-shot image
            (Tip-Adapter's ``augment_epoch``).
        feature_dir (str, optional): The feature store's folder. Default
            ``<work_dir>/feature_cache``; a sweep points all its runs at one.
        seed (int, optional): Seed of the augmentations; default the
            few-shot dataset's ``seed``.
        protocol (str): What selects hyperparameters and the best epoch
            (docs/protocol.md): ``'val'`` the whole val split;
            ``'fewshot_val'`` min(K, 4) images per class of it;
            ``'kshot_val'`` K per class of it (K = the shots; drawn with the
            few-shot seed, disjoint from the shots); ``'none'`` nothing:
            each head's validation-free hyperparameters
            (``validation_free_hyperparameters()``) and the last epoch;
            ``'reference_test'`` the TEST split, as the public reference
            code does (optimistically biased; logged as such). No other
            protocol ever reads the test split for a choice.
        precision (str): What the encoders compute in (docs/precision.md):
            ``'fp32'``; ``'fp16'`` or ``'bf16'``: under ``torch.autocast``
            on the model's device (on the CPU, bf16). Features are stored
            as float32 either way, under entries of their own precision.
        channels_last (bool): Encode in ``torch.channels_last`` memory
            format (conv towers on GPUs; harmless on a ViT).
    """

    def __init__(self,
                 augment_epoch: int = 10,
                 feature_dir: Optional[str] = None,
                 seed: Optional[int] = None,
                 protocol: str = 'val',
                 precision: str = 'fp32',
                 channels_last: bool = False) -> None:
        if int(augment_epoch) < 1:
            raise ValueError(f'few_shot_cfg.augment_epoch must be >= 1, got '
                             f'{augment_epoch}.')
        if protocol not in PROTOCOLS:
            raise ValueError(f'few_shot_cfg.protocol must be one of '
                             f'{list(PROTOCOLS)}, got {protocol!r}.')
        self.augment_epoch = int(augment_epoch)
        self.feature_dir = feature_dir
        self.seed = seed
        self.protocol = protocol
        precision_dtype(precision)  # fails now, naming the key
        self.precision = precision
        self.channels_last = bool(channels_last)
        #: Image paths of the few-shot set, once :meth:`build_cache` read it.
        self._shot_paths: Optional[frozenset] = None
        #: Class names of the few-shot set the head was fitted on, once
        #: :meth:`build_cache` has read it.
        self.classes: Optional[Tuple[str, ...]] = None
        #: The feature-store file of the support views, once encoded or
        #: loaded (Tip-Adapter-F's fast path trains on it).
        self.support_views_path: Optional[str] = None
        #: Images of the few-shot set whose views are stored, once known.
        self.num_support_images: int = 0
        self._features: Dict[str, EncodedFeatures] = {}
        self._datasets: Dict[str, StoredFeaturesDataset] = {}
        self._num_shots: Optional[int] = None
        self._split_classes: Dict[str, Any] = {}

    # -- the protocol --------------------------------------------------------
    @property
    def selection_split(self) -> Optional[str]:
        """The split whose features select hyperparameters and the epoch
        (``'val'``, ``'test'`` for ``'reference_test'``), None for
        ``'none'``."""
        return PROTOCOLS[self.protocol][0]

    @property
    def selects(self) -> bool:
        """Whether anything is selected on held-out data."""
        return self.selection_split is not None

    def check_config(self, cfg) -> None:
        """Fail early when validation would read the test split without the
        ``'reference_test'`` protocol."""
        val, test = cfg.get('val_dataloader'), cfg.get('test_dataloader')
        if (self.protocol != 'reference_test' and val and test
                and val.get('dataset') == test.get('dataset')):
            raise ValueError(
                'val_dataloader.dataset is the test split '
                '(test_dataloader.dataset): choosing hyperparameters or '
                'epochs on it is not a valid protocol. Give a validation '
                "split, or set few_shot_cfg.protocol='reference_test' to "
                'reproduce the reference code on purpose.')

    def store(self, runner) -> FeatureStore:
        return FeatureStore(self.feature_dir
                            or osp.join(runner.work_dir, 'feature_cache'))

    # -- the head ------------------------------------------------------------
    def build_cache(self, runner) -> None:
        """Give the runner's head what it lacks: zero-shot weights, and its
        fit on the support views. Nothing happens for a head that has both
        (fitted here before, or loaded from a checkpoint)."""
        model = unwrap(runner.model)
        head = model.head
        known = head.built_for(()) is not None  # remembers its classes
        if not model.needs_zero_shot_weights and head.is_fitted and (
                not known or (self.classes is not None
                              and head.built_for(self.classes))):
            return  # built here, or a checkpoint of an earlier version
        model.init_weights()  # weights of init_cfg before anything is encoded
        loader_cfg = self._loader_cfg(runner, 'fewshot')
        fewshot = DATASETS.build(loader_cfg['dataset'])
        self.classes = tuple(fewshot.metainfo.get('classes') or ())
        self._num_shots = getattr(fewshot, 'num_shots', None)
        self._shot_paths = frozenset(_image_paths(fewshot) or ())
        for split, classes in self._split_classes.items():
            self._check_classes(classes, split)
        for split, dataset in self._datasets.items():
            self._check_disjoint(split, dataset.img_paths)
        reprompt = known and not head.built_for(self.classes)
        if reprompt:
            self._forget_classes(runner, head)
        if model.needs_zero_shot_weights:
            runner.logger.info('Building zero-shot weights for '
                               f'{len(self.classes)} classes.')
            model.build_zero_shot_weights(self.classes,
                                          reset_projection=not reprompt)
        if head.is_fitted:
            head.set_class_names(self.classes)
            return
        if head.uses_image_tower:
            # Its features change while it trains: none are stored; the
            # few-shot images are its training set (train_dataloader).
            labels = torch.as_tensor([
                int(fewshot.get_data_info(i)['gt_label'])
                for i in range(len(fewshot))
            ])
            head.fit(None, labels.to(next(iter(head.buffers())).device))
            head.set_class_names(self.classes)
            runner.logger.info(
                f'{type(head).__name__} initialised for {len(fewshot)} '
                f'few-shot images, {head.num_classes} classes; it trains '
                'inside the image tower.')
            return
        views = self.support_views(runner, loader_cfg, fewshot)
        view_feats = views.views(self.augment_epoch)
        labels = views.labels.view(self.augment_epoch, -1)
        if not torch.equal(labels, labels[:1].expand_as(labels)):
            raise RuntimeError('Augmented views disagree on labels.')
        device = next(iter(head.buffers())).device
        head.fit(tuple(f.to(device) for f in view_feats),
                 labels[0].to(device))
        head.set_class_names(self.classes)
        dims = ' and '.join(str(f.shape[-1]) for f in view_feats)
        runner.logger.info(
            f'{type(head).__name__} fitted on {len(fewshot)} few-shot images '
            f'x {self.augment_epoch} augmented views (features of dim '
            f'{dims}), {head.num_classes} classes.')

    def _forget_classes(self, runner, head) -> None:
        """A head trained on other classes than the few-shot set's (a
        checkpoint tested on new classes or another dataset): re-prompt it
        if what it learned is class-agnostic, else refuse."""
        name = type(head).__name__
        shown = ', '.join(repr(c) for c in self.classes[:5]) + (
            ', ...' if len(self.classes) > 5 else '')
        if not head.class_agnostic:
            raise ValueError(
                f'{name} was trained or fitted on other classes than the '
                f'few-shot set of this config ({len(self.classes)} classes: '
                f'{shown}), and what it learned is per class, so it cannot '
                'name these classes. Test it on the classes it was trained '
                'on; a class-agnostic method (zero-shot CLIP, CoOp with a '
                'shared context, CoCoOp, CLIP-Adapter, ProLIP, VPT, MaPLe, '
                'CLIP-LoRA, Meta-Adapter) is re-prompted with new names '
                '(docs/generalization.md).')
        runner.logger.info(
            f'Re-prompting {name}: it was trained on other classes; what '
            'it learned is kept and its classifier is rebuilt for the '
            f'{len(self.classes)} classes of the few-shot set ({shown}).')
        head.forget_classes(len(self.classes))

    # -- stored features -----------------------------------------------------
    def support_views(self, runner, loader_cfg: dict,
                      fewshot) -> EncodedFeatures:
        """Raw features of the ``augment_epoch`` views of the few-shot set:
        row ``v * S + s`` is view ``v`` of image ``s``."""
        seed = self.seed if self.seed is not None else getattr(
            fewshot, 'seed', runner.seed)
        description = dict(
            kind='augmented_views',
            encoder=encoder_description(runner.cfg.get('model'),
                                        self.precision),
            dataset=loader_cfg['dataset'],
            samples=dataset_fingerprint(fewshot),
            num_views=self.augment_epoch,
            seed=seed)

        def loader() -> DataLoader:
            return runner.build_dataloader(
                dict(self._encoding_loader_cfg(runner, loader_cfg),
                     dataset=dict(type='AugmentedViewsDataset',
                                  dataset=fewshot,
                                  num_views=self.augment_epoch, seed=seed)),
                seed=runner.seed)

        what = (f'{self.augment_epoch} augmented views of {len(fewshot)} '
                'few-shot images')
        features, path = self._load_or_encode(runner, SUPPORT_VIEWS,
                                              description, loader, what)
        self.support_views_path = path
        self.num_support_images = len(features.labels) // self.augment_epoch
        return features

    def split_features(self,
                       runner,
                       split: str,
                       dataloader: Optional[DataLoader] = None
                       ) -> EncodedFeatures:
        """Raw features of the ``val`` or ``test`` split (the config's
        ``<split>_dataloader``), loaded or encoded once per run.

        Args:
            runner: The runner.
            split: 'val' or 'test'.
            dataloader: The split's image loader if one is built already
                (the loops'): its dataset is encoded (by a loader set up
                for encoding, :func:`encoding_loader_cfg`); else the
                dataset is built from the config.
        """
        if split in self._features:
            return self._features[split]
        loader_cfg = self._loader_cfg(runner, split)
        if dataloader is None:
            dataset = DATASETS.build(loader_cfg['dataset'])
            if hasattr(dataset, 'full_init'):  # as Runner.build_dataloader
                dataset.full_init()
        else:
            dataset = dataloader.dataset
        self._split_classes[split] = dataset.metainfo.get('classes')
        self._check_classes(self._split_classes[split], split)
        description = dict(
            kind='features',
            encoder=encoder_description(runner.cfg.get('model'),
                                        self.precision),
            dataset=loader_cfg['dataset'],
            samples=dataset_fingerprint(dataset))

        def loader() -> DataLoader:
            return runner.build_dataloader(
                dict(self._encoding_loader_cfg(runner, loader_cfg),
                     dataset=dataset),
                seed=runner.seed)

        features, _ = self._load_or_encode(runner, split, description,
                                           loader,
                                           f'{len(dataset)} {split} images')
        paths = _image_paths(dataset)
        per_class = PROTOCOLS[self.protocol][1]
        if split == 'val' and per_class is not None:
            num_shots = self.num_shots(runner)
            indices = self._per_class_subset(features.labels,
                                             per_class(num_shots), runner)
            runner.logger.info(
                f'few_shot_cfg.protocol={self.protocol!r}: selecting on '
                f'{len(indices)} of the {len(dataset)} val images '
                f'({per_class(num_shots)} per class, K={num_shots}).')
            index = torch.as_tensor(indices)
            features = EncodedFeatures(
                feats=tuple(f[index] for f in features.feats),
                labels=features.labels[index])
            paths = [paths[i] for i in indices] if paths else None
        self._check_disjoint(split, paths)
        self._features[split] = features
        self._datasets[split] = StoredFeaturesDataset(features,
                                                      dataset.metainfo, paths)
        return features

    def num_shots(self, runner) -> int:
        """K, the shots per class of the few-shot set."""
        if getattr(self, '_num_shots', None) is None:
            cfg = (runner.cfg.get('fewshot_dataloader') or {}).get(
                'dataset') or {}
            num_shots = cfg.get('num_shots')
            if num_shots is None:  # e.g. taken from a split file
                num_shots = getattr(
                    DATASETS.build(self._loader_cfg(runner,
                                                    'fewshot')['dataset']),
                    'num_shots', None)
            if num_shots is None:
                raise KeyError(
                    f'few_shot_cfg.protocol={self.protocol!r} draws the '
                    'validation subset from the shots K, but the few-shot '
                    'set (fewshot_dataloader.dataset) has no num_shots.')
            self._num_shots = int(num_shots)
        return int(self._num_shots)

    def _per_class_subset(self, labels: torch.Tensor, per_class: int,
                          runner) -> List[int]:
        """``per_class`` seeded indices of each class of the val split
        (the few-shot seed, so that each (dataset, K, seed) has its own),
        sorted; an error names a class with fewer images."""
        labels = labels.cpu().numpy().astype(np.int64)
        fewshot = (runner.cfg.get('fewshot_dataloader') or {}).get(
            'dataset') or {}
        seed = int(fewshot.get('seed', runner.seed or 0))
        counts = np.bincount(labels, minlength=len(self.classes or ()))
        short = np.flatnonzero(counts < per_class)
        if len(short):
            names = self.classes or ()
            first = int(short[0])
            name = (f' ({names[first]!r})' if first < len(names) else '')
            raise ValueError(
                f'few_shot_cfg.protocol={self.protocol!r} needs {per_class} '
                f'val images per class, but class {first}{name} of '
                f'val_dataloader.dataset has {int(counts[first])}'
                + (f' ({len(short)} classes are short)'
                   if len(short) > 1 else '')
                + ". Use protocol='val' (the whole split) or a larger "
                'validation split.')
        return sorted(
            int(i) for i in holdout_indices(labels, per_class, seed))

    def _check_disjoint(self, split: str, paths: Optional[list]) -> None:
        """Validation images must not be few-shot images."""
        if split != 'val' or not paths or not self._shot_paths:
            return
        shared = self._shot_paths.intersection(paths)
        if shared:
            raise ValueError(
                f'{len(shared)} images of the val split are also few-shot '
                f'(training) images, e.g. {sorted(shared)[0]}: validation '
                'must be disjoint from the shots. For a split carved from '
                'train, give FewShotDataset the same `holdout` as the '
                'HoldoutDataset of val_dataloader.')

    def features_dataloader(self, runner, split: str,
                            dataloader: DataLoader) -> DataLoader:
        """A loader over the stored features of ``split``, batched and
        split across ranks like ``dataloader`` (the split's image loader)."""
        self.split_features(runner, split, dataloader)
        return runner.build_dataloader(
            dict(batch_size=dataloader.batch_size,
                 num_workers=0,
                 sampler=dict(type='DefaultSampler', shuffle=False),
                 collate_fn=dict(type='pseudo_collate'),
                 dataset=self._datasets[split]),
            seed=runner.seed)

    def _load_or_encode(self, runner, name: str, description: dict,
                        make_loader, what: str) -> Tuple[EncodedFeatures, str]:
        """The entry ``(name, description)`` of the store, read or encoded
        (by all ranks) and written (by rank 0, under the entry's lock)."""
        store = self.store(runner)
        path = store.path(name, description)
        rank, world_size = get_dist_info()
        with store.lock(name, description) if rank == 0 else nullcontext():
            # Memory-mapped: the ranks of one machine share one copy.
            found = [store.load(name, description, mmap=True)
                     if rank == 0 else None]
            exists = [found[0] is not None]
            if world_size > 1:
                broadcast_object_list(exists, src=0)
            if exists[0]:
                runner.logger.info(f'Loaded the features of {what} from '
                                   f'{path}.')
                features = (found[0] if rank == 0 else read_features(
                    path, description, mmap=True))
            else:
                runner.logger.info(f'Encoding {what} ({self.precision}).')
                model = unwrap(runner.model)
                model.init_weights()
                features = extract_features(model, make_loader(),
                                            self.precision,
                                            self.channels_last)
                if rank == 0:
                    store.save(name, description, features)
                    runner.logger.info(f'Saved them to {path}.')
        if world_size > 1:
            barrier()  # the file exists for every rank from here on
            if not exists[0]:
                # Each rank gathered its own copy: share the stored one.
                features = read_features(path, description, mmap=True)
        return features, path

    # -- configs and checks --------------------------------------------------
    def _encoding_loader_cfg(self, runner, loader_cfg: dict) -> dict:
        """:func:`encoding_loader_cfg` of a split's loader config, pinned
        when the encoders run on a CUDA device."""
        cuda = model_device(unwrap(runner.model)).type == 'cuda'
        return encoding_loader_cfg(loader_cfg, pin_memory=cuda)

    def _protocol_hint(self, split: str) -> str:
        if split != self.selection_split:
            return ''
        return (f" few_shot_cfg.protocol={self.protocol!r} selects "
                f"hyperparameters on it; protocol='none' selects nothing "
                '(validation-free recipes).')

    def _loader_cfg(self, runner, split: str) -> dict:
        cfg = runner.cfg.get(f'{split}_dataloader')
        if not cfg:
            where = ('the few-shot train loader that the cache is built '
                     'from (see configs/_base_/datasets/)' if split
                     == 'fewshot' else f'the {split} split')
            raise KeyError(f'The config has no `{split}_dataloader`: add '
                           f'{where}.' + self._protocol_hint(split))
        return copy.deepcopy(dict(cfg))

    def _check_classes(self, classes: Any, split: str) -> None:
        if self.classes and classes is not None:
            check_class_names(self.classes, classes, 'the few-shot train set',
                              f'the {split} set')


def _image_paths(dataset) -> Optional[list]:
    """Each sample's ``img_path``, if the dataset has them."""
    if not hasattr(dataset, 'get_data_info') or not len(dataset):
        return None
    if 'img_path' not in dataset.get_data_info(0):
        return None
    return [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))]
