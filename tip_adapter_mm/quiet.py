"""Logs a person reads: library noise filtered, repeats shown once, the
run's set-up dumps kept in the work dir's log file.

Only the standard library is imported here, so that the package's
``__init__`` can use :func:`library_noise_filtered` around its own imports
(MMCV, MMEngine and MMPretrain warn while they are imported).

* :data:`LIBRARY_NOISE`: the library warnings that say nothing a user of
  this project can act on, each matched by message, category and the
  module that issues it (never a blanket ignore).
* :func:`quiet_warnings`: what the entry points (``tools/train.py``,
  ``tools/test.py``, ``tools/infer.py``, ``tools/sweep.py``) call first:
  :data:`LIBRARY_NOISE` ignored, and every other warning (ours included)
  shown once per process, however often it is raised.
* :class:`ConsoleFilter`: a :class:`logging.Filter` for the console
  handler of MMEngine's logger that drops the environment, config and
  hook-order dumps MMEngine's ``Runner`` logs while it is built (the file
  handler still writes them), MMEngine's :data:`LOGGED_NOISE`, and exact
  repeats; :class:`FewShotRunner` installs it, showing the dumps when
  ``show_config=True`` (``--show-config``) or ``log_level='DEBUG'``.
"""
import contextlib
import logging
import re
import warnings
from typing import Callable, Iterator, NamedTuple, Set, Tuple


class Noise(NamedTuple):
    """One library warning to ignore: ``message`` (a regular expression
    matched at the start of the text), its ``category``, and ``module``
    (a regular expression matched against the issuing module's name, as
    :func:`warnings.filterwarnings` does)."""
    message: str
    category: type
    module: str
    why: str


#: The library warnings filtered at the entry points.
LIBRARY_NOISE: Tuple[Noise, ...] = (
    Noise(r'Fail to import ``MultiScaleDeformableAttention``', UserWarning,
          r'mmcv\.cnn\.bricks\.transformer$',
          'mmcv-lite has no compiled ops; no model here uses this one'),
    Noise(r'pkg_resources is deprecated as an API', UserWarning,
          r'(mmengine|mmcv|mmpretrain|importlib)(\.|$)',
          "setuptools' deprecation, raised while MMEngine and MMPretrain "
          'import pkg_resources'),
    Noise(r'Setting (OMP|MKL)_NUM_THREADS environment variable for each '
          r'process', UserWarning, r'mmengine\.',
          "MMEngine's default in distributed runs; FewShotRunner logs the "
          'threads it uses (CPU plan)'),
)


def _add_noise_filters() -> None:
    for noise in LIBRARY_NOISE:
        warnings.filterwarnings('ignore', message=noise.message,
                                category=noise.category, module=noise.module)


@contextlib.contextmanager
def library_noise_filtered() -> Iterator[None]:
    """:data:`LIBRARY_NOISE` ignored inside the block; the warning filters
    as they were after it (the package's ``__init__`` imports MMEngine,
    MMCV and MMPretrain inside it)."""
    with warnings.catch_warnings():
        _add_noise_filters()
        yield


class _ShowOnce:
    """A ``warnings.showwarning`` that shows each (text, category) once.

    Python's own ``'once'`` action forgets what it has shown whenever a
    library changes the warning filters (``warnings.catch_warnings``, used
    by PyTorch and MMEngine), so PyTorch's DataLoader warning came back 25
    times in one Tip-Adapter-F run; this remembers across such changes.
    """

    def __init__(self, show: Callable) -> None:
        self.show = show
        self.shown: Set[Tuple[str, type]] = set()

    def __call__(self, message, category, filename, lineno, file=None,
                 line=None) -> None:
        key = (str(message), category)
        if key in self.shown:
            return
        self.shown.add(key)
        self.show(message, category, filename, lineno, file, line)


def quiet_warnings() -> None:
    """Ignore :data:`LIBRARY_NOISE` and show every other warning once per
    process (for the entry points; call it before anything else runs).

    Calling it again changes nothing more.
    """
    _add_noise_filters()
    if not isinstance(warnings.showwarning, _ShowOnce):
        warnings.showwarning = _ShowOnce(warnings.showwarning)


#: The start of the messages MMEngine's ``Runner`` logs while it is built:
#: the config and the hooks' order.
SETUP_DUMPS: Tuple[str, ...] = (
    'Config:\n',
    'Hooks will be executed in the following order:',
)
#: The environment dump starts with a dashed line, then this.
ENVIRONMENT_DUMP = re.compile(r'^\s*-+\s*\nSystem environment:')
#: The start of MMEngine's logged (not ``warnings``) deprecation notes that
#: its own CheckpointHook triggers in every training run.
LOGGED_NOISE: Tuple[str, ...] = (
    '"FileClient" will be deprecated in future.',
    '"HardDiskBackend" is the alias of "LocalBackend"',
)


def is_setup_dump(message: str) -> bool:
    """Whether ``message`` is one of the environment, config and
    hook-order dumps MMEngine's ``Runner`` logs while it is built."""
    return (message.startswith(SETUP_DUMPS)
            or ENVIRONMENT_DUMP.match(message) is not None)


class ConsoleFilter(logging.Filter):
    """What the console handler of MMEngine's logger leaves out (the log
    file keeps everything):

    * the set-up dumps (:func:`is_setup_dump`), unless ``show_setup``;
    * MMEngine's :data:`LOGGED_NOISE`;
    * a message identical to one already shown (e.g. LoggerHook's
      ``Exp name: ...`` at every epoch).
    """

    def __init__(self, show_setup: bool = False) -> None:
        super().__init__()
        self.show_setup = show_setup
        self.shown: Set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not self.show_setup and is_setup_dump(message):
            return False
        if message.startswith(LOGGED_NOISE) or message in self.shown:
            return False
        self.shown.add(message)
        return True


def console_handlers(logger: logging.Logger) -> Tuple[logging.Handler, ...]:
    """The handlers of ``logger`` that write to a terminal stream (not to a
    file)."""
    return tuple(
        h for h in logger.handlers if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler))


def filter_console(logger: logging.Logger,
                   show_setup: bool = False) -> ConsoleFilter:
    """Add a :class:`ConsoleFilter` to the console handlers of ``logger``
    (MMEngine's ``MMLogger``: a stream handler and the work dir's file
    handler); returns it."""
    console_filter = ConsoleFilter(show_setup)
    for handler in console_handlers(logger):
        handler.addFilter(console_filter)
    return console_filter
