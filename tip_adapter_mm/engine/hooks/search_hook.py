"""Searching the cache head's hyperparameters on the validation split."""
import os.path as osp
from typing import Optional

from mmengine.hooks import Hook

from mmpretrain.registry import HOOKS
from ..few_shot_builder import few_shot_builder, unwrap
from ..search import SearchResult, grid_search, save_search_report


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

    The protocol (``few_shot_cfg.protocol``, :class:`FewShotBuilder`) says
    which split selects: the whole val split, a K-shot or min(K, 4)-shot
    subset of it, nothing (``'none'``: the head's
    ``validation_free_hyperparameters()`` are applied, no search), or the
    test split for ``'reference_test'`` only. Features of the search split
    come from the runner's :class:`FewShotBuilder` (encoded once, stored,
    shared with the val and test loops). The search is vectorised over the
    grid and chunked over samples (:func:`grid_search`); the accuracy of
    every grid point goes to ``<log_dir>/hyperparameter_search.json`` with
    a heatmap ``.png``. Runs once per fit: not again if the head was
    searched already (e.g. loaded from a checkpoint that was);
    hyperparameters set by hand (``head.set_hyperparameters``) do not count
    as searched. A head with nothing to search (zero-shot CLIP, NCM) is
    left as it is.

    Args:
        split (str, optional): Deprecated spelling of the protocol: None
            (default) follows ``few_shot_cfg.protocol``; ``'val'`` is the
            same; ``'test'`` requires ``protocol='reference_test'``.
        chunk_size (int): Samples per chunk of the search.
        max_elements (int): Bound on any temporary tensor of the search.
    """

    priority = 'NORMAL'

    def __init__(self,
                 split: Optional[str] = None,
                 chunk_size: int = 4096,
                 max_elements: int = 2**26) -> None:
        if split not in (None, 'val', 'test'):
            raise ValueError(
                f"HyperparameterSearchHook: split must be None, 'val' or "
                f"'test', got {split!r}; few_shot_cfg.protocol chooses the "
                'split.')
        self.split = split
        self.chunk_size = int(chunk_size)
        self.max_elements = int(max_elements)
        self._training = False
        self._fixed_applied = False

    def before_run(self, runner) -> None:
        protocol = few_shot_builder(runner,
                                    'HyperparameterSearchHook').protocol
        if self.split == 'test' and protocol != 'reference_test':
            raise ValueError(
                "HyperparameterSearchHook(split='test') searches on the TEST "
                "split: set few_shot_cfg.protocol='reference_test' to do so "
                'on purpose (the reference code\'s protocol), or drop split.')
        if protocol == 'reference_test':
            runner.logger.warning(
                "few_shot_cfg.protocol='reference_test': the best epoch and "
                'the hyperparameters are chosen on the TEST split, as the '
                'public reference code does; the test accuracy is '
                'optimistically biased. Use a validation protocol for a '
                'valid estimate.')

    def after_train(self, runner) -> None:
        self._training = False
        self._fixed_applied = False
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

    def before_train(self, runner) -> None:
        self._training = True

    def before_val(self, runner) -> None:
        if not self._training:
            self.search(runner)

    def before_test(self, runner) -> None:
        self.search(runner)

    def search(self, runner, force: bool = False):
        """Search and apply; returns the :class:`SearchResult` or None."""
        model = unwrap(runner.model)
        head = model.head
        builder = few_shot_builder(runner, 'HyperparameterSearchHook')
        if not builder.selects:
            if not self._fixed_applied:
                fixed = head.validation_free_hyperparameters()
                if fixed:
                    head.set_hyperparameters(**fixed)
                    runner.logger.info(
                        "few_shot_cfg.protocol='none': validation-free "
                        'hyperparameters ' + ', '.join(
                            f'{k}={v:.4g}' for k, v in fixed.items()) + '.')
                self._fixed_applied = True
            return None
        if not head.search_grid() or (head.searched and not force):
            return None
        split = builder.selection_split
        data = builder.split_features(runner, split)
        device = next(iter(head.buffers())).device
        feats = model.normalize_features(
            tuple(f.to(device) for f in data.feats))
        result: SearchResult = grid_search(head, feats,
                                           data.labels.to(device),
                                           self.chunk_size, self.max_elements)
        head.apply_search(result.best)
        best = ', '.join(f'{k}={v:.4f}' for k, v in result.best.items())
        runner.logger.info(
            f'Hyperparameter search on {split} ({result.num_samples} '
            f'images, {result.num_points} points): {best}, top-1 '
            f'{result.accuracy:.2f}% (protocol {builder.protocol!r}).')
        if runner.rank == 0:
            paths = save_search_report(result, runner.log_dir)
            runner.logger.info(f'Search report: {", ".join(paths)}')
        return result
