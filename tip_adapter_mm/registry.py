"""The ``tip_adapter_mm`` scope: our configs from anywhere.

A config anywhere on disk can inherit ours through MMEngine's package
scope, as MMPretrain's are reached with ``mmpretrain::``::

    import tip_adapter_mm  # our tools do it before reading a config
    _base_ = ['tip_adapter_mm::_base_/models/tip_adapter_rn50.py', ...]

Two things make MMEngine accept the scope:

* :data:`CONFIG_SCOPE_MODULE` is entered in MMEngine's public table of
  config packages (``mmengine.config.utils.MODULE2PACKAGE``) by
  :func:`register_config_scope`. MMEngine resolves
  ``tip_adapter_mm::<path>`` to ``<package folder>/.mim/configs/<path>``;
  the package folder is found from this module's file, which works for a
  regular install, an editable one (``pip install -e .``) and a checkout on
  ``PYTHONPATH``. ``tip_adapter_mm/.mim/configs`` is a link to the
  repository's ``configs/`` (a wheel holds a copy, see ``setup.cfg``).
* Dicts inherited through the scope carry ``_scope_='tip_adapter_mm'``, so
  MMEngine looks for this module and for a registry of that scope in every
  registry tree. The registries below are children of MMPretrain's, with no
  modules of their own: a name is looked up in MMPretrain's registry (where
  this package registers everything), exactly as without the scope.
"""
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import Registry
from mmpretrain import registry as mmpretrain_registry

#: The scope name, as written before ``::`` in a config.
SCOPE = 'tip_adapter_mm'
#: The module MMEngine is told to look up for the scope: a module of the
#: package's top folder, so its folder is the package's.
CONFIG_SCOPE_MODULE = 'tip_adapter_mm.registry'


def _child(parent_name: str) -> Registry:
    parent = getattr(mmpretrain_registry, parent_name)
    # Importing the package registers every module (in MMPretrain's).
    return Registry(parent.name, parent=parent, scope=SCOPE,
                    locations=['tip_adapter_mm'])


RUNNERS = _child('RUNNERS')
RUNNER_CONSTRUCTORS = _child('RUNNER_CONSTRUCTORS')
LOOPS = _child('LOOPS')
HOOKS = _child('HOOKS')
LOG_PROCESSORS = _child('LOG_PROCESSORS')
OPTIMIZERS = _child('OPTIMIZERS')
OPTIM_WRAPPERS = _child('OPTIM_WRAPPERS')
OPTIM_WRAPPER_CONSTRUCTORS = _child('OPTIM_WRAPPER_CONSTRUCTORS')
PARAM_SCHEDULERS = _child('PARAM_SCHEDULERS')
DATASETS = _child('DATASETS')
DATA_SAMPLERS = _child('DATA_SAMPLERS')
TRANSFORMS = _child('TRANSFORMS')
MODELS = _child('MODELS')
MODEL_WRAPPERS = _child('MODEL_WRAPPERS')
WEIGHT_INITIALIZERS = _child('WEIGHT_INITIALIZERS')
BATCH_AUGMENTS = _child('BATCH_AUGMENTS')
TASK_UTILS = _child('TASK_UTILS')
TOKENIZER = _child('TOKENIZER')
METRICS = _child('METRICS')
EVALUATORS = _child('EVALUATORS')
VISUALIZERS = _child('VISUALIZERS')
VISBACKENDS = _child('VISBACKENDS')


def register_config_scope() -> None:
    """Let MMEngine resolve ``tip_adapter_mm::<path>`` in ``_base_``.

    Idempotent; a different entry already there (someone else's) is an
    error rather than silently replaced.
    """
    current = MODULE2PACKAGE.setdefault(SCOPE, CONFIG_SCOPE_MODULE)
    if current != CONFIG_SCOPE_MODULE:
        raise RuntimeError(
            f'mmengine.config.utils.MODULE2PACKAGE[{SCOPE!r}] is '
            f'{current!r}; expected {CONFIG_SCOPE_MODULE!r} (set by '
            'tip_adapter_mm.registry).')
