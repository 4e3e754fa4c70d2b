"""Pieces shared by the benchmark scripts in this folder.

The scripts run as ``python benchmarks/<script>.py``; Python puts the
script's folder first on ``sys.path``, so they import this module as
``common`` (and so do the processes that ``multiprocessing`` spawns from
them, which inherit that ``sys.path``). torch and open_clip are imported
only inside the functions that need them, so that importing this module
keeps a script's process as light as its own imports make it.
"""
import argparse
import json
import os
import os.path as osp
import platform
from typing import Tuple

#: The repository root.
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


# -- arguments ----------------------------------------------------------------
def new_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc`` (a script's
    docstring) that shows the defaults in ``--help``."""
    return argparse.ArgumentParser(
        description=doc.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_out_arg(parser: argparse.ArgumentParser, file_name: str) -> None:
    """``--out``, by default ``benchmarks/results/<file_name>``."""
    parser.add_argument(
        '--out', default=osp.join(REPO, 'benchmarks', 'results', file_name),
        help='where to write the JSON results')


def add_model_args(parser: argparse.ArgumentParser, title: str, *,
                   width: int, layers: int, embed_dim: int, patch_help: str,
                   embed_help: str) -> argparse._ArgumentGroup:
    """The argument group ``title`` with the sizes of the random open_clip
    ViT that :func:`write_clip_model` reads (``--vision-width``,
    ``--vision-layers``, ``--patch-size``, ``--embed-dim``); returns the
    group, for a script's further model arguments."""
    model = parser.add_argument_group(title)
    model.add_argument('--vision-width', type=int, default=width,
                       help='width of the vision transformer')
    model.add_argument('--vision-layers', type=int, default=layers,
                       help='depth of the vision transformer')
    model.add_argument('--patch-size', type=int, default=32, help=patch_help)
    model.add_argument('--embed-dim', type=int, default=embed_dim,
                       help=embed_help)
    return model


# -- machine ------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else
    ``platform.processor()``, else 'unknown')."""
    cpu = platform.processor() or 'unknown'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    return cpu


def cpu_seconds() -> Tuple[float, float]:
    """``(machine, own)`` CPU seconds so far: busy time of all cores
    (``/proc/stat``) and of this process with its reaped children."""
    with open('/proc/stat') as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    ticks = os.sysconf('SC_CLK_TCK')
    own = os.times()
    return ((user + nice + system + irq + softirq) / ticks,
            own.user + own.system + own.children_user + own.children_system)


def other_cpu_share(start: Tuple[float, float], wall: float) -> float:
    """Fraction of the machine's CPU time used by other processes since
    ``start`` (a :func:`cpu_seconds`), over ``wall`` seconds."""
    machine, own = cpu_seconds()
    other = (machine - start[0]) - (own - start[1])
    return max(0.0, other) / (wall * os.cpu_count())


# -- model --------------------------------------------------------------------
def write_clip_model(root: str, args: argparse.Namespace, *, model_name: str,
                     seed: int, text_width: int, text_heads: int) -> dict:
    """Save an open_clip architecture file ``<root>/<model_name>.json`` (a
    ViT of 224 px sized by :func:`add_model_args`' arguments, a one-layer
    text tower of ``text_width`` and ``text_heads``) and random weights
    drawn after ``torch.manual_seed(seed)``; return the backbone /
    text-encoder kwargs of the configs."""
    import open_clip
    import torch
    arch = dict(
        embed_dim=args.embed_dim,
        vision_cfg=dict(image_size=224, layers=args.vision_layers,
                        width=args.vision_width,
                        head_width=min(64, args.vision_width),
                        patch_size=args.patch_size),
        text_cfg=dict(context_length=77, vocab_size=49408, width=text_width,
                      heads=text_heads, layers=1))
    arch_file = osp.join(root, f'{model_name}.json')
    with open(arch_file, 'w') as f:
        json.dump(arch, f)
    open_clip.add_model_config(arch_file)
    torch.manual_seed(seed)
    weights = osp.join(root, 'weights.pt')
    torch.save(open_clip.create_model(model_name).state_dict(), weights)
    return dict(model_name=model_name, pretrained=weights,
                model_config_file=arch_file)


# -- results ------------------------------------------------------------------
def write_json(path: str, obj: object) -> None:
    """Write ``obj`` as indented JSON to ``path``, creating its folder."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)
