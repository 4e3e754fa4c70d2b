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
from ..datasets.checks import DataProblems, image_problems, plural
from ..datasets.class_names import (CLASSES_FILE, check_class_names,
                                    find_data_root)
from ..datasets.few_shot import dataset_labels, holdout_indices
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

    * :meth:`check_data` checks every split the run reads before anything
      is encoded, and reports all problems in one error;
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
        #: Whether :meth:`check_data` has passed, and the few-shot dataset
        #: it built (None without a few-shot loader in the config).
        self._checked = False
        self._fewshot = None
        #: The names prompted for the few-shot set's classes, once checked.
        self.prompt_names: Optional[Tuple[str, ...]] = None

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
        self.check_data(runner)
        model = unwrap(runner.model)
        head = model.head
        known = head.built_for(()) is not None  # remembers its classes
        if not model.needs_zero_shot_weights and head.is_fitted and (
                not known or (self.classes is not None
                              and head.built_for(self.classes))):
            return  # built here, or a checkpoint of an earlier version
        model.init_weights()  # weights of init_cfg before anything is encoded
        loader_cfg = self._loader_cfg(runner, 'fewshot')
        fewshot = (self._fewshot if self._fewshot is not None else
                   DATASETS.build(loader_cfg['dataset']))
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
                                          reset_projection=not reprompt,
                                          prompt_names=self.prompt_names)
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
        self.check_data(runner)  # e.g. a test run encodes test first
        loader_cfg = self._loader_cfg(runner, split)
        if dataloader is None:
            dataset = DATASETS.build(loader_cfg['dataset'])
            if hasattr(dataset, 'full_init'):  # as Runner.build_dataloader
                dataset.full_init()
        else:
            dataset = dataloader.dataset
        self._split_classes[split] = dataset.metainfo.get('classes')
        self._check_classes(self._split_classes[split], split)
        description = self._split_description(runner, loader_cfg, dataset)

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

    def _split_description(self, runner, loader_cfg: dict,
                           dataset) -> dict:
        """What keys the stored features of a val or test split."""
        return dict(
            kind='features',
            encoder=encoder_description(runner.cfg.get('model'),
                                        self.precision),
            dataset=loader_cfg['dataset'],
            samples=dataset_fingerprint(dataset))

    # -- the checks made before anything is encoded --------------------------
    def splits_used(self, runner) -> List[str]:
        """The val and test splits this run reads: ``val`` when the config
        validates (``val_cfg``) or selects on it (the protocol), ``test``
        when it tests (``test_cfg``) or selects on it
        (``'reference_test'``); only those with a loader in the config."""
        cfg = runner.cfg
        return [
            split for split in ('val', 'test')
            if cfg.get(f'{split}_dataloader') and (
                cfg.get(f'{split}_cfg') or self.selection_split == split)
        ]

    def check_data(self, runner) -> None:
        """Check, before anything is encoded, every split the run reads
        (the few-shot set and :meth:`splits_used`), and raise ONE
        ValueError listing every problem found, naming files and classes:

        * a split that cannot be built (e.g. an empty folder) or is empty;
        * class names (in label order) that differ from the few-shot set's;
          folders that differ from the few-shot set's in a folder dataset
          given ``classes=`` (MMPretrain then takes labels from the sorted
          folders, whatever their names);
        * a class of a folder dataset without images;
        * a class with fewer than K images available for the shots;
        * an override of the prompt names (``model.class_names``,
          ``<data_root>/classes.txt``) that does not fit the classes;
        * an image that is missing, whose header does not open, or that is
          cut short (:func:`~tip_adapter_mm.datasets.checks.image_problem`:
          a header read and a look at the file's end, no decode). The
          images of a split whose features are stored already are not
          read.

        Once per run; the few-shot dataset it builds is the one
        :meth:`build_cache` fits on.
        """
        if self._checked:
            return
        problems = DataProblems()
        fewshot = source = None
        if runner.cfg.get('fewshot_dataloader'):
            fewshot_cfg = self._loader_cfg(runner, 'fewshot')['dataset']
            fewshot, source = self._check_fewshot(fewshot_cfg, problems)
        reference = fewshot if fewshot is not None else source
        classes = (tuple(reference.metainfo.get('classes') or ())
                   if reference is not None else None)
        folders = _folders(source if source is not None else fewshot)
        model = unwrap(runner.model)
        prompt_names = None
        head = getattr(model, 'head', None)
        if classes and getattr(head, 'uses_text', False) and hasattr(
                model, 'prompt_names'):
            data_root = find_data_root(reference)
            classes_file = (osp.join(data_root, CLASSES_FILE)
                            if data_root else None)
            try:
                prompt_names = model.prompt_names(classes, classes_file)
            except (ValueError, FileNotFoundError) as err:
                problems.add(f'Prompt names: {err}')
        if fewshot is not None:
            self._check_images('the few-shot set', fewshot, problems)
        for split in self.splits_used(runner):
            self._check_split(runner, split, classes, folders, problems)
        problems.raise_if_any()
        self._checked = True
        self._fewshot = fewshot
        self.prompt_names = prompt_names

    def _check_split(self, runner, split: str, classes: Optional[tuple],
                     folders: Optional[List[str]],
                     problems: DataProblems) -> None:
        """The checks of :meth:`check_data` on the val or test split,
        against the few-shot set's ``classes`` and ``folders``."""
        loader_cfg = self._loader_cfg(runner, split)
        where = f'{split}_dataloader.dataset'
        try:
            dataset = DATASETS.build(loader_cfg['dataset'])
            if hasattr(dataset, 'full_init'):
                dataset.full_init()
        except Exception as err:  # reported with the others
            problems.add(f'{where} cannot be built: '
                         f'{type(err).__name__}: {err}')
            return
        if not len(dataset):
            problems.add(f'{where} has no images.')
            return
        split_classes = dataset.metainfo.get('classes')
        names_differ = False
        if classes and split_classes is not None:
            try:
                check_class_names(classes, split_classes,
                                  'the few-shot train set',
                                  f'the {split} set')
            except ValueError as err:
                problems.add(f'{where}: {err}')
                names_differ = True
        split_folders = _folders(dataset)
        if (folders and split_folders and split_folders != folders
                and not names_differ):
            try:
                check_class_names(folders, split_folders,
                                  'the folders of the few-shot train set',
                                  f'the folders of the {split} set')
            except ValueError as err:
                problems.add(
                    f'{where}: {err}\n     Labels come from the sorted '
                    'folder names (also with classes=): every split needs '
                    'the same class folders.')
        self._check_empty_classes(dataset, where, problems)
        stored = osp.isfile(
            self.store(runner).path(
                split, self._split_description(runner, loader_cfg, dataset)))
        if not stored:  # its images were read when it was encoded
            self._check_images(f'the {split} set', dataset, problems)

    def _check_fewshot(self, cfg: dict, problems: DataProblems):
        """Build the few-shot set; with FewShotDataset, count first the
        images each class of its source has for K shots, so that every
        short class is named. Returns ``(few-shot set or None, source or
        None)``."""
        where = 'fewshot_dataloader.dataset'
        source = None
        try:
            if (cfg.get('type') == 'FewShotDataset'
                    and isinstance(cfg.get('dataset'), dict)):
                source = DATASETS.build(cfg['dataset'])
                if hasattr(source, 'full_init'):
                    source.full_init()
                if (cfg.get('split_file') is None
                        and not self._enough_shots(cfg, source, problems)):
                    return None, source
                cfg = dict(cfg, dataset=source)
            fewshot = DATASETS.build(cfg)
            if hasattr(fewshot, 'full_init'):
                fewshot.full_init()
        except Exception as err:  # reported with the others
            problems.add(f'{where} cannot be built: {type(err).__name__}: '
                         f'{err}')
            return None, source
        if not len(fewshot):
            problems.add(f'{where} has no images.')
            return None, source
        return fewshot, source

    def _enough_shots(self, cfg: dict, source,
                      problems: DataProblems) -> bool:
        """Whether every class of ``source`` has K images for the shots
        (outside the held-out validation images); a problem names each
        class that has fewer."""
        num_shots = cfg.get('num_shots')
        if num_shots is None:
            return True  # FewShotDataset names the missing argument
        num_shots = int(num_shots)
        classes = tuple(source.metainfo.get('classes') or ())
        labels = dataset_labels(source)
        counts = np.bincount(labels, minlength=len(classes))
        if cfg.get('holdout'):
            held = holdout_indices(labels, **dict(cfg['holdout']))
            counts = counts - np.bincount(labels[held],
                                          minlength=len(counts))
        short = np.flatnonzero(counts < num_shots)
        if not len(short):
            return True
        problems.add(
            f'{plural(len(short), "class")} with fewer than num_shots='
            f'{num_shots} images for the shots in '
            'fewshot_dataloader.dataset.dataset'
            + (' (outside the held-out validation images)'
               if cfg.get('holdout') else '')
            + '; lower num_shots or add images:',
            [f'class {c} ({classes[c]!r}): {counts[c]} images'
             if c < len(classes) else f'label {c}: {counts[c]} images'
             for c in short])
        return False

    @staticmethod
    def _check_empty_classes(dataset, where: str,
                             problems: DataProblems) -> None:
        """A class folder without images (folder datasets only: others may
        leave classes out on purpose, e.g. ImageNet-A)."""
        if not _folders(dataset):
            return
        classes = tuple(dataset.metainfo.get('classes') or ())
        counts = np.bincount(dataset_labels(dataset),
                             minlength=len(classes))
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            root = getattr(dataset, 'img_prefix', '') or ''
            problems.add(
                f'{where}: {plural(len(empty), "class folder")} without '
                'images:',
                [osp.join(root, _folders(dataset)[c]) for c in empty])

    @staticmethod
    def _check_images(what: str, dataset, problems: DataProblems) -> None:
        """A problem naming each image of ``dataset`` that is missing,
        does not open or is cut short."""
        paths = _image_paths(dataset)
        if not paths:
            return
        bad = image_problems(paths)
        if bad:
            problems.add(
                f'{len(bad)} of the {len(paths)} images of {what} cannot '
                'be used:', [f'{path} {why}' for path, why in bad.items()])

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


def _folders(dataset) -> Optional[List[str]]:
    """The class folders of a folder dataset (MMPretrain's CustomDataset
    without an annotation file), in label order; None for others."""
    for _ in range(8):
        folder_to_idx = getattr(dataset, 'folder_to_idx', None)
        if folder_to_idx:
            return sorted(folder_to_idx, key=folder_to_idx.get)
        dataset = getattr(dataset, 'dataset', None)
        if dataset is None:
            return None
    return None


def _image_paths(dataset) -> Optional[list]:
    """Each sample's ``img_path``, if the dataset has them."""
    if not hasattr(dataset, 'get_data_info') or not len(dataset):
        return None
    if 'img_path' not in dataset.get_data_info(0):
        return None
    return [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))]
