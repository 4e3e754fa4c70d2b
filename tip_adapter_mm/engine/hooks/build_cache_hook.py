"""Building the zero-shot weights and the cache model before they are used."""
import copy
import os.path as osp
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmpretrain.registry import DATASETS, HOOKS
from ...datasets.class_names import check_class_names
from ...utils.features import feature_sets, one_or_tuple
from ..feature_extraction import dataset_fingerprint, extract_features
from ..feature_store import FeatureStore, describe_checkpoint


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


#: Model config keys that determine the visual features.
ENCODER_KEYS = ('backbone', 'neck', 'second_backbone', 'second_neck',
                'second_mean', 'second_std', 'data_preprocessor')


def _describe_weights(module_cfg):
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


def encoder_description(runner) -> dict:
    """What determines the visual features besides the data: the configs
    of the visual encoder(s) and the preprocessor, with each local weight
    file's size and mtime."""
    model_cfg = copy.deepcopy(dict(runner.cfg.get('model') or {}))
    description = {
        key: _describe_weights(model_cfg.get(key))
        for key in ENCODER_KEYS if model_cfg.get(key) is not None
    }
    description.setdefault('data_preprocessor', None)
    return description


@HOOKS.register_module()
class BuildCacheHook(Hook):
    """Build the head's zero-shot weights and cache before train/val/test.

    The few-shot images are encoded ``augment_epoch`` times under the train
    pipeline and the head builds its cache from these views
    (:meth:`BaseCacheHead.build_cache`; Tip-Adapter: raw features averaged
    per image, then L2-normalised, one-hot values). All passes
    are encoded in one loader pass over :class:`AugmentedViewsDataset`,
    whose per-sample seeds make the views, hence the cache, identical on
    any number of ranks. The encoded views are saved under ``cache_dir`` and
    reused when the same encoder, data, shots, seed and augmentation are
    asked for again. Nothing happens if the head already holds a cache
    (e.g. loaded from a checkpoint).

    Args:
        augment_epoch (int): Augmented passes over the few-shot set.
        dataloader (dict, optional): The few-shot train loader; defaults to
            the config's top-level ``fewshot_dataloader``.
        seed (int, optional): Seed of the augmentations; defaults to the
            few-shot dataset's ``seed``.
        cache_dir (str, optional): Defaults to ``<work_dir>/feature_cache``.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 augment_epoch: int = 10,
                 dataloader: Optional[dict] = None,
                 seed: Optional[int] = None,
                 cache_dir: Optional[str] = None) -> None:
        self.augment_epoch = int(augment_epoch)
        self.dataloader = dataloader
        self.seed = seed
        self.cache_dir = cache_dir
        self.class_names = None
        #: Feature-store file of the encoded views, once built or loaded.
        self.views_path: Optional[str] = None

    def before_train(self, runner) -> None:
        self.build(runner)

    def before_val(self, runner) -> None:
        self.build(runner)
        self._check_classes(runner, runner.val_dataloader.dataset,
                            'the val set')

    def before_test(self, runner) -> None:
        self.build(runner)
        self._check_classes(runner, runner.test_dataloader.dataset,
                            'the test set')

    def _check_classes(self, runner, dataset, where: str) -> None:
        # The classes of the few-shot set this cache was built from, by this
        # hook or by FewShotRunner before the model was wrapped.
        built = self.class_names or getattr(
            unwrap(runner.model), 'fewshot_classes', None)
        classes = dataset.metainfo.get('classes')
        if built and classes is not None:
            check_class_names(built, classes, 'the few-shot train set',
                              where)

    def _loader_cfg(self, runner) -> dict:
        cfg = self.dataloader or runner.cfg.get('fewshot_dataloader')
        if cfg is None:
            raise KeyError(
                'BuildCacheHook needs the few-shot train loader: add a '
                'top-level `fewshot_dataloader` to the config (see '
                'configs/_base_/datasets/) or pass `dataloader=`.')
        return copy.deepcopy(dict(cfg))

    def build(self, runner, model: Optional[torch.nn.Module] = None) -> None:
        """Build what the head lacks (``model``: defaults to the runner's,
        unwrapped; :class:`FewShotRunner` passes it before wrapping)."""
        model = unwrap(runner.model) if model is None else model
        head = model.head
        if getattr(model, 'needs_zero_shot_weights', False) or (
                not head.has_cache):
            self._build(runner, model, head)

    def _build(self, runner, model, head) -> None:
        loader_cfg = self._loader_cfg(runner)
        fewshot = DATASETS.build(loader_cfg['dataset'])
        self.class_names = tuple(fewshot.metainfo.get('classes') or ())
        model.fewshot_classes = self.class_names
        if getattr(model, 'needs_zero_shot_weights', False):
            runner.logger.info('Building zero-shot weights for '
                               f'{len(self.class_names)} classes.')
            model.build_zero_shot_weights(self.class_names)
        if head.has_cache:
            return
        seed = self.seed if self.seed is not None else getattr(
            fewshot, 'seed', runner.seed)
        views = self.encode_views(runner, model, loader_cfg, fewshot, seed)
        labels = views['labels'].view(self.augment_epoch, len(fewshot))
        if not torch.equal(labels, labels[:1].expand_as(labels)):
            raise RuntimeError('Augmented views disagree on labels.')
        device = head.cache_values.device
        feats = tuple(
            f.view(self.augment_epoch, len(fewshot), -1).to(device)
            for f in feature_sets(views))
        head.build_cache(one_or_tuple(feats), labels[0].to(device))
        dims = ' and '.join(str(f.shape[-1]) for f in feats)
        runner.logger.info(
            f'Cache model: {len(fewshot)} keys of dim {dims}, '
            f'{head.num_classes} classes, {self.augment_epoch} augmented '
            'views averaged.')

    def encode_views(self, runner, model, loader_cfg: dict, fewshot,
                     seed: int) -> dict:
        """Raw features ``(V * S, C)`` of all views, loaded or encoded."""
        cache_dir = self.cache_dir or osp.join(runner.work_dir,
                                               'feature_cache')
        store = FeatureStore(cache_dir)
        description = dict(
            kind='augmented_views',
            encoder=encoder_description(runner),
            dataset=loader_cfg['dataset'],
            samples=dataset_fingerprint(fewshot),
            num_views=self.augment_epoch,
            seed=seed)
        key = store.key(description)
        self.views_path = store.path('views', key)
        saved = store.load('views', key)
        if saved is not None:
            runner.logger.info(
                f'Loaded {self.augment_epoch} augmented views of '
                f'{len(fewshot)} few-shot images from '
                f'{store.path("views", key)}.')
            return saved
        runner.logger.info(
            f'Encoding {self.augment_epoch} augmented views of '
            f'{len(fewshot)} few-shot images.')
        views_cfg = dict(
            loader_cfg,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(type='AugmentedViewsDataset', dataset=fewshot,
                         num_views=self.augment_epoch, seed=seed))
        loader = runner.build_dataloader(views_cfg, seed=runner.seed)
        views = extract_features(model, loader)
        if runner.rank == 0:
            path = store.save('views', key, views, description)
            runner.logger.info(f'Saved augmented views to {path}.')
        return views
