"""Searching the cache head's hyperparameters on the validation split."""
import os.path as osp

from mmengine.hooks import Hook

from mmpretrain.registry import HOOKS
from ..few_shot_builder import few_shot_builder, unwrap
from ..search import SearchResult, grid_search, save_search_report


def _same_split(cfg) -> bool:
    """Whether validation runs on the test data."""
    val, test = cfg.get('val_dataloader'), cfg.get('test_dataloader')
    return bool(val) and bool(test) and val.get('dataset') == test.get(
        'dataset')


@HOOKS.register_module()
class HyperparameterSearchHook(Hook):
    """Grid-search the head's hyperparameters (alpha, beta for Tip-Adapter)
    on held-out features, and apply the best before val/test.

    With training (Tip-Adapter-F) it stays out of the way while the keys are
    fine-tuned (validation then uses the initial alpha and beta, as the
    loss does); after training it loads the best checkpoint chosen on
    validation by ``CheckpointHook(save_best=...)``, searches again with the
    fine-tuned keys and saves the result as ``<work_dir>/final_searched.pth``
    (what ``tools/test.py CONFIG CHECKPOINT`` takes).

    Features of the search split come from the runner's
    :class:`FewShotBuilder` (encoded once, stored, shared with the val and
    test loops). The search is vectorised over the grid and chunked over
    samples (:func:`grid_search`); the accuracy of every grid point goes to
    ``<log_dir>/hyperparameter_search.json`` with a heatmap ``.png``. Runs
    once per fit: not again if the head was searched already (e.g. loaded
    from a checkpoint that was); hyperparameters set by hand
    (``head.set_hyperparameters``) do not count as searched. A head with
    nothing to search (zero-shot CLIP, NCM) is left as it is.

    Args:
        split (str): 'val' (default, the valid protocol) or 'test', which
            reproduces the public reference code's search on test images:
            the reported test accuracy is then optimistically biased.
        chunk_size (int): Samples per chunk of the search.
        max_elements (int): Bound on any temporary tensor of the search.
    """

    priority = 'NORMAL'

    def __init__(self,
                 split: str = 'val',
                 chunk_size: int = 4096,
                 max_elements: int = 2**26) -> None:
        if split not in ('val', 'test'):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        self.split = split
        self.chunk_size = int(chunk_size)
        self.max_elements = int(max_elements)
        self._training = False

    def before_train(self, runner) -> None:
        self._training = True
        if self.split == 'test' or _same_split(runner.cfg):
            runner.logger.warning(
                'Validation and/or the search use the TEST split (the '
                'reference code\'s protocol): the best epoch and alpha/beta '
                'are chosen on test, so the test accuracy is optimistically '
                'biased. Use a validation split for a valid estimate.')

    def after_train(self, runner) -> None:
        self._training = False
        best = runner.message_hub.get_info('best_ckpt')
        if best:
            runner.logger.info(f'Loading the best epoch on validation: {best}')
            runner.load_checkpoint(best)
        self.search(runner, force=True)
        runner.save_checkpoint(
            runner.work_dir,
            'final_searched.pth',
            save_optimizer=False,
            save_param_scheduler=False)
        runner.logger.info(
            'Saved the searched model to '
            f'{osp.join(runner.work_dir, "final_searched.pth")}')

    def before_val(self, runner) -> None:
        if not self._training:
            self.search(runner)

    def before_test(self, runner) -> None:
        self.search(runner)

    def search(self, runner, force: bool = False):
        """Search and apply; returns the :class:`SearchResult` or None."""
        model = unwrap(runner.model)
        head = model.head
        if not head.search_grid() or (head.searched and not force):
            return None
        if self.split == 'test':
            runner.logger.warning(
                'HyperparameterSearchHook(split="test") searches on the TEST '
                'split, as the public reference code does for ImageNet. The '
                'test accuracy it reports is not a valid held-out estimate.')
        data = few_shot_builder(runner, 'HyperparameterSearchHook')\
            .split_features(runner, self.split)
        device = next(iter(head.buffers())).device
        feats = model.normalize_features(
            tuple(f.to(device) for f in data.feats))
        result: SearchResult = grid_search(head, feats,
                                           data.labels.to(device),
                                           self.chunk_size, self.max_elements)
        head.apply_search(result.best)
        best = ', '.join(f'{k}={v:.4f}' for k, v in result.best.items())
        runner.logger.info(
            f'Hyperparameter search on {self.split} ({result.num_samples} '
            f'images, {result.num_points} points): {best}, '
            f'top-1 {result.accuracy:.2f}%.')
        if runner.rank == 0:
            paths = save_search_report(result, runner.log_dir)
            runner.logger.info(f'Search report: {", ".join(paths)}')
        return result
