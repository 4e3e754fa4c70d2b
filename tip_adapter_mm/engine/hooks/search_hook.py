"""Searching the cache head's hyperparameters on the validation split."""
import inspect
import os.path as osp
from typing import Dict, List, Optional, Sequence

from mmengine.hooks import Hook

from mmpretrain.registry import HOOKS
from ..few_shot_builder import few_shot_builder, unwrap
from ..search import (SearchResult, declined, grid_edges, grid_search,
                      save_search_report, search_with_kept, widening_key,
                      zero_shot_top1)

#: Top-level config key: head hyperparameters kept at their config values.
KEEP_KEY = 'keep_hyperparameters'


def hand_set_hyperparameters(cfg_options: Optional[dict]) -> List[str]:
    """The head arguments a ``--cfg-options`` dict sets by hand
    (``model.head.<name>=...``, not ``type``), in order; e.g.
    ``['alpha']`` for ``model.head.alpha=0``."""
    names = []
    for key in cfg_options or {}:
        parts = str(key).split('.')
        if len(parts) == 3 and parts[:2] == ['model', 'head'] \
                and parts[2] not in names + ['type', '_delete_']:
            names.append(parts[2])
    return names


def keep_hand_set_hyperparameters(cfg, cfg_options: Optional[dict]
                                  ) -> List[str]:
    """Add the head arguments set in ``cfg_options`` to the config's
    ``keep_hyperparameters`` (:func:`tip_adapter_mm.utils.load_config`
    calls it for tools/train.py and tools/test.py), so that the search
    leaves ``--cfg-options model.head.alpha=0`` at 0; names that are not
    hyperparameters of the head (``search_scale``...) are not searched
    anyway. Returns the kept names."""
    names = list(cfg.get(KEEP_KEY) or [])
    for name in hand_set_hyperparameters(cfg_options):
        if name not in names:
            names.append(name)
    if names:
        cfg[KEEP_KEY] = names
    return names


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

    **Values set by hand are kept.** The hyperparameters named in ``keep``
    or in the config's top-level ``keep_hyperparameters`` list (which
    :func:`keep_hand_set_hyperparameters` fills from ``--cfg-options
    model.head.<name>=...``) stay at the config's values: the search visits
    only the others, with the kept ones at their values
    (:func:`search_with_kept`), or does not run when all are kept; the log
    says what it left. A name that is neither a hyperparameter nor an
    argument of the head is an error.

    **After the search** the log warns, once per run, when the best point
    is on an edge of the grid (the smallest or largest value of a searched
    hyperparameter), naming the config key that widens that grid
    (:func:`widening_key`); and says when the search declined the cache
    (:func:`declined`: best = zero-shot, or no better than zero-shot on the
    samples searched). Both are in the report (``edges``, ``declined``,
    ``zero_shot_accuracy``).

    Args:
        split (str, optional): Deprecated spelling of the protocol: None
            (default) follows ``few_shot_cfg.protocol``; ``'val'`` is the
            same; ``'test'`` requires ``protocol='reference_test'``.
        chunk_size (int): Samples per chunk of the search.
        max_elements (int): Bound on any temporary tensor of the search.
        keep (Sequence[str]): Head hyperparameters left at the config's
            values (added to the config's ``keep_hyperparameters``).
    """

    priority = 'NORMAL'

    def __init__(self,
                 split: Optional[str] = None,
                 chunk_size: int = 4096,
                 max_elements: int = 2**26,
                 keep: Sequence[str] = ()) -> None:
        if split not in (None, 'val', 'test'):
            raise ValueError(
                f"HyperparameterSearchHook: split must be None, 'val' or "
                f"'test', got {split!r}; few_shot_cfg.protocol chooses the "
                'split.')
        self.split = split
        self.chunk_size = int(chunk_size)
        self.max_elements = int(max_elements)
        if isinstance(keep, str):
            keep = [keep]
        self.keep = [str(k) for k in keep]
        self._training = False
        self._fixed_applied = False
        self._kept_logged = False
        self._edges_warned = False
        self._cfg_keep: List[str] = []

    def before_run(self, runner) -> None:
        protocol = few_shot_builder(runner,
                                    'HyperparameterSearchHook').protocol
        if self.split == 'test' and protocol != 'reference_test':
            raise ValueError(
                "HyperparameterSearchHook(split='test') searches on the TEST "
                "split: set few_shot_cfg.protocol='reference_test' to do so "
                'on purpose (the reference code\'s protocol), or drop split.')
        cfg_keep = runner.cfg.get(KEEP_KEY) or []
        if isinstance(cfg_keep, str):
            cfg_keep = [cfg_keep]
        self._cfg_keep = [str(k) for k in cfg_keep]
        self._edges_warned = False
        self._kept_logged = False
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
        kept = self.kept_values(head)
        searched = {n for stage in head.search_stages() for n in stage.grid}
        if kept and searched <= set(kept):
            if not self._kept_logged:
                runner.logger.info(
                    'Hyperparameter search: not run; ' + ', '.join(
                        f'{k}={v:.4g}' for k, v in kept.items()) +
                    f' kept as set by hand ({KEEP_KEY}).')
                self._kept_logged = True
            return None
        split = builder.selection_split
        data = builder.split_features(runner, split)
        device = next(iter(head.buffers())).device
        feats = model.normalize_features(
            tuple(f.to(device) for f in data.feats))
        labels = data.labels.to(device)
        if kept:
            result = search_with_kept(head, feats, labels, kept,
                                      self.chunk_size)
        else:
            result = grid_search(head, feats, labels, self.chunk_size,
                                 self.max_elements)
        result.zero_shot_accuracy = zero_shot_top1(head, feats, labels,
                                                   self.chunk_size)
        result.declined = declined(result, result.zero_shot_accuracy)
        result.edges = grid_edges(result)
        head.apply_search(result.best)
        best = ', '.join(f'{k}={v:.4f}' for k, v in result.best.items())
        left = (' (left as set by hand: ' + ', '.join(
            f'{k}={v:.4g}' for k, v in kept.items()) + ')') if kept else ''
        runner.logger.info(
            f'Hyperparameter search on {split} ({result.num_samples} '
            f'images, {result.num_points} points): {best}, top-1 '
            f'{result.accuracy:.2f}% (protocol {builder.protocol!r})'
            f'{left}.')
        self.report_outcome(runner, head, result)
        if runner.rank == 0:
            paths = save_search_report(result, runner.log_dir)
            runner.logger.info(f'Search report: {", ".join(paths)}')
        return result

    def kept_values(self, head) -> Dict[str, float]:
        """``{name: value}`` of the head's hyperparameters to keep (this
        hook's ``keep`` and the config's ``keep_hyperparameters``); other
        head arguments named there are not searched anyway."""
        values = head.hyperparameters
        arguments = inspect.signature(type(head).__init__).parameters
        any_argument = any(p.kind == p.VAR_KEYWORD
                           for p in arguments.values())
        kept = {}
        for name in dict.fromkeys(self.keep + self._cfg_keep):
            if name in values:
                kept[name] = values[name]
            elif name not in arguments and not any_argument:
                raise ValueError(
                    f'{KEEP_KEY} / HyperparameterSearchHook(keep=...): '
                    f'{name!r} is not a hyperparameter of '
                    f'{type(head).__name__}; its hyperparameters are '
                    f'{list(values)}.')
        return kept

    def report_outcome(self, runner, head, result: SearchResult) -> None:
        """Warn (once per run) about a best point on a grid's edge; say
        when the cache was declined."""
        if result.declined:
            runner.logger.warning(
                'Hyperparameter search: the cache was declined: the best '
                'point (' + ', '.join(
                    f'{k}={v:.4g}' for k, v in result.best.items()) +
                f') reaches {result.accuracy:.2f}% top-1 on '
                f'{result.num_samples} samples, zero-shot alone '
                f'{result.zero_shot_accuracy:.2f}%: the few-shot set '
                'brings nothing on the split that selects.')
        if not result.edges or self._edges_warned:
            return
        self._edges_warned = True
        parts = []
        for edge in result.edges:
            key = widening_key(head, edge['name'])
            where = (f"{edge['name']}={edge['value']:.4g} is on the "
                     f"{edge['edge']} edge of its grid")
            if key is None:
                parts.append(where)
            elif edge['edge'] == 'upper':
                parts.append(f'{where}; raise {key} to widen it')
            else:
                parts.append(f'{where} (its lower end is fixed; the grid '
                             f'is set by {key})')
        runner.logger.warning(
            'Hyperparameter search: the best point may lie outside the '
            'grid: ' + '; '.join(parts) + ' (--cfg-options KEY=VALUE).')
