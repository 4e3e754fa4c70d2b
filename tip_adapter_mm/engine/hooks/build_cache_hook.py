"""Fitting the head before it is trained, validated or tested."""
from mmengine.hooks import Hook

from mmpretrain.registry import HOOKS
from ..few_shot_builder import few_shot_builder


@HOOKS.register_module()
class BuildCacheHook(Hook):
    """Ask the runner's :class:`FewShotBuilder` for the head's zero-shot
    weights and its fit on the few-shot set, before train, val and test.

    The builder encodes the ``augment_epoch`` augmented views of the
    few-shot set once (or reads them from the feature store) and the head
    builds its cache (or fits its statistics) from them. Nothing happens for
    a head that is fitted already (e.g. loaded from a checkpoint). How many
    views, their seed and where features are stored are the runner's
    ``few_shot_cfg``: Tip-Adapter-F needs them before this hook runs.
    """

    priority = 'ABOVE_NORMAL'

    def before_train(self, runner) -> None:
        few_shot_builder(runner, 'BuildCacheHook').build_cache(runner)

    def before_val(self, runner) -> None:
        few_shot_builder(runner, 'BuildCacheHook').build_cache(runner)

    def before_test(self, runner) -> None:
        few_shot_builder(runner, 'BuildCacheHook').build_cache(runner)
