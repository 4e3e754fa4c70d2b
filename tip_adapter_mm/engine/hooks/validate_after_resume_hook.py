"""Re-run the validation a kill may have cut off."""
from mmengine.hooks import Hook

from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class ValidateAfterResumeHook(Hook):
    """Validate the resumed epoch before training goes on.

    MMEngine writes ``epoch_N.pth`` before validating epoch N, so a run
    killed in between resumes without that validation, and the best epoch
    on validation (``CheckpointHook(save_best=...)``) could differ from an
    uninterrupted run. Validating the resumed model once restores it; when
    the validation had happened, it is repeated with the same result and
    changes nothing.
    """

    # After CheckpointHook.before_train, which prepares best-checkpoint saving.
    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        interval = getattr(loop, 'val_interval', 1)
        if (runner.epoch > 0 and runner.val_loop is not None
                and runner.epoch >= getattr(loop, 'val_begin', 1)
                and runner.epoch % interval == 0):
            runner.logger.info(f'Resumed at epoch {runner.epoch}: '
                               'validating it before training goes on.')
            runner.val_loop.run()
