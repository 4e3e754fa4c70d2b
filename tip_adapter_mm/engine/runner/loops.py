"""Loops that run on stored features instead of images."""
import copy
from typing import Dict, Optional, Sequence, Union

from mmengine.dist import get_world_size
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.utils.data import DataLoader

from mmpretrain.registry import LOOPS
from ..few_shot_builder import few_shot_builder, unwrap


class StoredFeaturesLoopMixin:
    """Iterate the stored features of ``split`` instead of its images.

    The split's image loader is built as usual (``self.image_dataloader``);
    at each run :class:`FewShotBuilder` gives a loader over the split's
    features with the same batch size and rank split (encoding the images
    once, or reading them from the feature store), so the encoders do no
    work in the loop.
    """

    split: str

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.image_dataloader = self.dataloader

    def run(self) -> dict:
        builder = few_shot_builder(self.runner, type(self).__name__)
        head = getattr(unwrap(self.runner.model), 'head', None)
        if getattr(head, 'uses_image_tower', False):
            kind = type(self).__name__.replace('StoredFeatures', '')
            raise ValueError(
                f'{type(head).__name__} trains inside the image tower, so '
                f'stored features of the {self.split} split would be stale: '
                f"set {self.split}_cfg = dict(type='{kind}') (MMEngine's loop "
                'over images).')
        self.dataloader = builder.features_dataloader(
            self.runner, self.split, self.image_dataloader)
        return super().run()


@LOOPS.register_module()
class StoredFeaturesValLoop(StoredFeaturesLoopMixin, ValLoop):
    """MMEngine's ``ValLoop`` over the stored features of the val split
    (:class:`StoredFeaturesLoopMixin`). Arguments as ``ValLoop``."""

    split = 'val'


@LOOPS.register_module()
class StoredFeaturesTestLoop(StoredFeaturesLoopMixin, TestLoop):
    """MMEngine's ``TestLoop`` over the stored features of the test split
    (:class:`StoredFeaturesLoopMixin`). Arguments as ``TestLoop``."""

    split = 'test'


@LOOPS.register_module()
class FewShotTrainLoop(EpochBasedTrainLoop):
    """MMEngine's ``EpochBasedTrainLoop`` for few-shot training.

    * ``global_batch_size`` is the batch summed over processes: each of
      ``world_size`` processes loads ``global_batch_size // world_size``,
      so 1 and 8 GPUs run the same recipe. ``'all'``: full batch, one
      iteration per epoch over the stored views (ProLIP's recipe).
    * With ``few_shot_cfg.protocol='none'`` nothing is validated while
      training and the last epoch is the result.
    * A ``CachedViewsDataset`` train set without ``views_file`` is given the
      support views the head was fitted on (``runner.few_shot``): the fast
      path, where the encoders do no work while training.
    * A re-encoding train set (``FewShotDataset``) must draw the same shots
      as ``fewshot_dataloader``; ``dict(type='FewShotDataset')`` alone is
      ``fewshot_dataloader.dataset`` (the few-shot images with its train
      pipeline: heads that train inside the image tower).

    Args:
        runner, dataloader, max_epochs, val_begin, val_interval,
            dynamic_intervals: As ``EpochBasedTrainLoop``.
        global_batch_size (int | 'all', optional): None keeps the loader's
            ``batch_size`` per process.
    """

    def __init__(self,
                 runner,
                 dataloader: Union[DataLoader, Dict],
                 max_epochs: int,
                 val_begin: int = 1,
                 val_interval: int = 1,
                 dynamic_intervals: Optional[Sequence] = None,
                 global_batch_size: Union[int, str, None] = None) -> None:
        if isinstance(dataloader, dict):
            dataloader = self.prepare_dataloader(runner, dataloader,
                                                 global_batch_size)
        super().__init__(runner, dataloader, max_epochs, val_begin,
                         val_interval, dynamic_intervals)
        builder = few_shot_builder(runner, 'FewShotTrainLoop')
        if not builder.selects:
            self.val_begin = self.max_epochs + 1  # never validate
            runner.logger.info(
                "few_shot_cfg.protocol='none': no validation while training; "
                'the last epoch is the result.')

    @staticmethod
    def full_batch(cfg: dict, num_views: int, num_images: int) -> int:
        """Samples of one epoch of the train loader ``cfg`` over ``num_views``
        stored views of ``num_images`` images, rounded up to a multiple of
        the processes: ``global_batch_size='all'``."""
        dataset = cfg.get('dataset')
        kind = (dataset.get('type')
                if isinstance(dataset, dict) else type(dataset).__name__)
        if kind != 'CachedViewsDataset':
            raise ValueError(
                "train_cfg.global_batch_size='all' (full batch) needs the "
                'stored views as train set (CachedViewsDataset), got '
                f'{kind!r}.')
        sampler = (cfg.get('sampler') or {}).get('type')
        total = num_images * (1 if sampler == 'ViewCyclingSampler' else
                              num_views)
        world_size = get_world_size()
        return -(-total // world_size) * world_size

    @staticmethod
    def prepare_dataloader(runner, cfg: dict,
                           global_batch_size: Optional[int]) -> dict:
        """The train loader config with the per-process batch and the
        support views filled in."""
        cfg = copy.deepcopy(dict(cfg))
        dataset = cfg.get('dataset')
        builder = few_shot_builder(runner, 'FewShotTrainLoop')
        if isinstance(dataset, dict) and dataset.get(
                'type') == 'CachedViewsDataset' and dataset.get(
                    'views_file') is None:
            builder.build_cache(runner)
            if builder.support_views_path is None:
                raise RuntimeError(
                    'The head was fitted before this run (a checkpoint?), '
                    'so there are no support views to train on: set '
                    'train_dataloader.dataset.views_file.')
            dataset.update(views_file=builder.support_views_path,
                           num_views=builder.augment_epoch,
                           classes=list(builder.classes or ()))
        fewshot_cfg = (runner.cfg.get('fewshot_dataloader')
                       or {}).get('dataset')
        if isinstance(dataset, dict) and dataset.get(
                'type') == 'FewShotDataset' and 'dataset' not in dataset:
            # The few-shot images themselves (heads that train inside the
            # image tower): the same shots as fewshot_dataloader.
            if not fewshot_cfg:
                raise KeyError(
                    "train_dataloader.dataset=dict(type='FewShotDataset') "
                    'without a dataset takes fewshot_dataloader.dataset, '
                    'which the config lacks.')
            dataset.update(copy.deepcopy(dict(fewshot_cfg)))
        if global_batch_size == 'all':
            global_batch_size = FewShotTrainLoop.full_batch(
                cfg, builder.augment_epoch, builder.num_support_images)
        elif global_batch_size is not None and not isinstance(
                global_batch_size, int):
            raise ValueError(
                "train_cfg.global_batch_size must be an int or 'all', got "
                f'{global_batch_size!r}.')
        if global_batch_size is not None:
            world_size = get_world_size()
            if global_batch_size % world_size:
                raise ValueError(
                    f'train_cfg.global_batch_size={global_batch_size} is not '
                    f'divisible by the {world_size} processes.')
            cfg['batch_size'] = global_batch_size // world_size
            runner.logger.info(
                f'global_batch_size {global_batch_size}: '
                f'{cfg["batch_size"]} per process x {world_size}.')
        if not isinstance(dataset, dict):
            return cfg
        fewshot = fewshot_cfg
        if fewshot and dataset.get('type') == fewshot.get('type'):
            differ = [
                k for k in ('num_shots', 'seed', 'holdout')
                if dataset.get(k) != fewshot.get(k)
            ]
            if differ:
                raise ValueError(
                    'train_dataloader.dataset and fewshot_dataloader.dataset '
                    f'differ in {differ}: ' + ', '.join(
                        f'{k}={dataset.get(k)!r} vs {fewshot.get(k)!r}'
                        for k in differ) + '. Set both (e.g. --cfg-options '
                    'train_dataloader.dataset.num_shots=8 '
                    'fewshot_dataloader.dataset.num_shots=8).')
        return cfg
