"""Training throughput of every method the runner trains (images per
second), through the classifier's own ``train_step``.

Each method is built from its ImageNet 16-shot config
(``configs/<method>_imagenet_16shot.py``) with the config's architecture
and random weights (``pretrained`` dropped: nothing is downloaded), or with
``--tiny`` a small random ViT for every method (a smoke run). Per method:

* the model is built, given zero-shot weights for ``--classes`` class names
  and fitted as the runner fits it (random support features for the
  methods that read stored views, nothing for those that train inside the
  image tower);
* its optimizer is built by MMEngine's ``build_optim_wrapper`` from the
  config's ``optim_wrapper`` (only the method's trainable tensors);
* steps of ``model.train_step(batch, optim_wrapper)`` (data preprocessor,
  forward, loss, backward, optimizer step) run on batches of the config's
  size (``train_cfg.global_batch_size`` on one process; a full batch
  (``'all'``) is capped by ``--max-batch``): **stored features** ``(B, C)``
  for the methods that train on stored views (Tip-Adapter-F, CLIP-Adapter,
  TaskRes, CLAP, ProLIP, CoOp, CoCoOp, Meta-Adapter), **images** ``(B, 3,
  224, 224)`` for those that train inside the image tower (VPT, MaPLe,
  CLIP-LoRA);
* one warm-up step, then steps until ``--max-seconds`` (at least
  ``--min-steps``); images/s = batch x steps / time; the time of an epoch
  of ``--shots`` shots of the classes (``shots x classes`` images) follows.

Rows ``encode only`` time the frozen image tower of each architecture on a
batch of ``--encode-batch`` images without gradients: what the
stored-feature methods pay once per image, and the image-tower methods at
every step. Methods whose text tower runs at every step (CoOp, CoCoOp,
MaPLe, CLIP-LoRA) cost more per step with more classes; ``--classes``
(100 by default; ImageNet has 1000) is in the table's title.

Prints a Markdown table and writes JSON (``--out``).

    python benchmarks/bench_training.py [--methods coop vpt ...]
        [--classes 100] [--device cuda] [--amp] [--tiny]
"""
import copy
import os
import os.path as osp
import tempfile
import time
from typing import List, Optional, Sequence

from bench_heads import Meter, in_fork
from common import (REPO, add_out_arg, cpu_model, cpu_seconds, new_parser,
                    other_cpu_share, write_clip_model, write_json)

MiB = 1024**2

#: key of ``configs/<key>_imagenet_16shot.py`` -> the method's name.
METHODS = {
    'tip_f': 'Tip-Adapter-F',
    'clip_adapter': 'CLIP-Adapter',
    'taskres': 'TaskRes',
    'clap': 'CLAP',
    'prolip': 'ProLIP',
    'meta_adapter': 'Meta-Adapter',
    'coop': 'CoOp',
    'cocoop': 'CoCoOp',
    'vpt': 'VPT',
    'maple': 'MaPLe',
    'clip_lora': 'CLIP-LoRA',
}
#: Types of the open_clip modules whose weights the configs name.
OPEN_CLIP_TYPES = ('OpenCLIPVisualBackbone', 'OpenCLIPTextEncoder')


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = new_parser(__doc__)
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        choices=list(METHODS), help='methods to measure')
    parser.add_argument('--classes', type=int, default=100,
                        help='classes (text prompts per step)')
    parser.add_argument('--shots', type=int, default=16,
                        help='shots per class (support set, epoch size)')
    parser.add_argument('--max-batch', type=int, default=4096,
                        help="cap of a full-batch recipe ('all')")
    parser.add_argument('--encode-batch', type=int, default=32,
                        help='images per step of the encode-only rows')
    parser.add_argument('--max-seconds', type=float, default=30.0,
                        help='time budget of the timed steps per method')
    parser.add_argument('--min-steps', type=int, default=2,
                        help='timed steps at least (after one warm-up)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--amp', action='store_true',
                        help="MMEngine's AmpOptimWrapper (CUDA only)")
    parser.add_argument('--threads', type=int,
                        default=int(os.environ.get('OMP_NUM_THREADS', 0))
                        or os.cpu_count(),
                        help='torch threads on the CPU')
    parser.add_argument('--tiny', action='store_true',
                        help='a tiny random ViT for every method (smoke)')
    parser.add_argument('--seed', type=int, default=0)
    add_out_arg(parser, 'training.json')
    return parser.parse_args(argv)


def quiet() -> None:
    """MMEngine's log at warnings only (no init_weights report)."""
    import logging

    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.WARNING)


def load_config(key: str, args, tiny: Optional[dict]):
    """The method's ImageNet config with random weights (or the tiny
    model) and ``--classes`` classes."""
    from mmengine.config import Config
    cfg = Config.fromfile(
        osp.join(REPO, 'configs', f'{key}_imagenet_16shot.py'))
    model = cfg.model
    for part in ('backbone', 'text_encoder', 'neck'):
        module = model.get(part)
        if not module:
            continue
        if module.get('type') in OPEN_CLIP_TYPES:
            if tiny is not None:
                module.update(tiny)
            else:
                module.pretrained = None
        elif tiny is not None:
            raise ValueError(f'--tiny: {key} has a model.{part} of type '
                             f"{module.get('type')}, not open_clip's.")
        module.pop('init_cfg', None)
    model.head.num_classes = args.classes
    return cfg


def batch_size(cfg, num_images: int, args) -> int:
    """The recipe's batch on one process."""
    batch = cfg.train_cfg.get('global_batch_size') or cfg.train_dataloader.get(
        'batch_size')
    if batch == 'all':
        return min(num_images, args.max_batch)
    return int(batch)


def measure(key: str, args, tiny: Optional[dict]) -> dict:
    """One method's row (in a forked process)."""
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    quiet()
    device = torch.device(args.device)
    meter = Meter(device)
    cfg = load_config(key, args, tiny)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model).to(device)
        model.init_weights()
        names = [f'class number {i}' for i in range(args.classes)]
        model.build_zero_shot_weights(names)
        head = model.head
        labels = torch.arange(args.classes).repeat_interleave(args.shots)
        if head.uses_image_tower:
            head.fit(None, labels.to(device))
        image = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
        pre = model.data_preprocessor
        with torch.no_grad():
            (feat, ) = model.encode_image(
                pre(dict(inputs=list(image.to(device))))['inputs'])
        channels = feat.shape[-1]
        if not head.uses_image_tower:
            views = torch.randn(1, len(labels), channels, device=device)
            head.fit((views, ), labels.to(device))
        optim_cfg = copy.deepcopy(cfg.optim_wrapper)
        if args.amp:
            optim_cfg.type = 'AmpOptimWrapper'
        optim = build_optim_wrapper(model, optim_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = batch_size(cfg, len(labels), args)
    g = torch.Generator().manual_seed(args.seed)
    picked = torch.randint(0, args.classes, (batch, ), generator=g)
    samples = [DataSample().set_gt_label(int(y)) for y in picked]
    if head.uses_image_tower:
        data = dict(inputs=list(torch.randint(
            0, 256, (batch, 3, 224, 224), dtype=torch.uint8, generator=g)),
                    data_samples=samples)
        kind = 'images'
    else:
        data = dict(feats=[torch.randn(batch, channels, generator=g)],
                    data_samples=samples)
        kind = 'stored features'
    model.train()

    def step():
        return model.train_step(copy.copy(data), optim)

    _, warmup, _ = meter(step)
    steps, seconds, peak = 0, 0.0, 0
    while steps < args.min_steps or seconds < args.max_seconds:
        _, took, mem = meter(step)
        steps, seconds, peak = steps + 1, seconds + took, max(peak, mem)
    per_second = batch * steps / seconds
    return dict(key=key, name=METHODS[key], kind=kind,
                architecture=cfg.model.backbone.get('model_name'),
                head=type(head).__name__, batch=batch, steps=steps,
                trainable_parameters=trainable,
                warmup_seconds=warmup, seconds_per_step=seconds / steps,
                images_per_second=per_second,
                epoch_seconds=len(labels) / per_second,
                peak_mib=peak / MiB)


def measure_encoding(architecture: str, args,
                     tiny: Optional[dict]) -> dict:
    """The frozen image tower alone, no gradients (in a forked process)."""
    import torch

    from tip_adapter_mm.models import OpenCLIPVisualBackbone
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    meter = Meter(device)
    kwargs = dict(tiny) if tiny else dict(model_name=architecture)
    tower = OpenCLIPVisualBackbone(**kwargs).to(device)
    images = torch.randn(args.encode_batch, 3, 224, 224, device=device)

    def step():
        with torch.no_grad(), torch.autocast(
                device.type, enabled=args.amp and device.type == 'cuda'):
            return tower(images)

    meter(step)
    steps, seconds, peak = 0, 0.0, 0
    while steps < args.min_steps or seconds < args.max_seconds:
        _, took, mem = meter(step)
        steps, seconds, peak = steps + 1, seconds + took, max(peak, mem)
    per_second = args.encode_batch * steps / seconds
    return dict(key=f'encode_{architecture}', kind='images, no gradient',
                name=f'encode only ({architecture})',
                architecture=architecture, head=None,
                batch=args.encode_batch, steps=steps,
                trainable_parameters=0, seconds_per_step=seconds / steps,
                images_per_second=per_second,
                epoch_seconds=args.classes * args.shots / per_second,
                peak_mib=peak / MiB)


def markdown(rows: List[dict]) -> str:
    lines = [
        '| method | architecture | trains on | batch | trainable | s / step '
        '| images / s | epoch | peak memory |',
        '|---|---|---|---|---|---|---|---|---|'
    ]
    for row in rows:
        if 'error' in row:
            lines.append(f"| {row['name']} | | error: "
                         f"{row['error'].strip().splitlines()[-1]} "
                         '| | | | | | |')
            continue
        lines.append(
            f"| {row['name']} | {row['architecture']} | {row['kind']} | "
            f"{row['batch']} | {row['trainable_parameters']:,} | "
            f"{row['seconds_per_step']:.3g} | "
            f"{row['images_per_second']:.3g} | "
            f"{row['epoch_seconds']:.3g} s | {row['peak_mib']:.0f} MiB |")
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    import torch

    import tip_adapter_mm  # noqa: F401 (registers the modules)
    with tempfile.TemporaryDirectory() as root:
        tiny = None
        if args.tiny:
            args.vision_width, args.vision_layers = 64, 2
            args.patch_size, args.embed_dim = 32, 64
            tiny = write_clip_model(root, args, model_name='Bench-Tiny-ViT',
                                    seed=args.seed, text_width=64,
                                    text_heads=2)
        machine = (f'{cpu_model()}, {os.cpu_count()} cores, torch threads '
                   f'{args.threads}' if args.device == 'cpu' else
                   args.device)
        print(f'Training throughput at {args.classes} classes x '
              f'{args.shots} shots; {machine}; torch {torch.__version__}'
              f"{'; AMP' if args.amp else ''}\n", flush=True)
        start, wall = cpu_seconds(), time.perf_counter()
        rows, architectures = [], []
        for key in args.methods:
            row, error = in_fork(measure, key, args, tiny)
            row = row or dict(key=key, name=METHODS[key], error=error)
            rows.append(row)
            print(f"{row['name']}: " + (
                row['error'] if 'error' in row else
                f"{row['images_per_second']:.3g} images/s "
                f"({row['architecture']}, {row['kind']})"), flush=True)
            arch = row.get('architecture')
            if arch and row.get('kind') == 'images' and (
                    arch not in architectures):
                architectures.append(arch)
        for arch in architectures or ([] if args.tiny else ['ViT-B-16']):
            row, error = in_fork(measure_encoding, arch, args, tiny)
            rows.append(row or dict(key=f'encode_{arch}',
                                    name=f'encode only ({arch})',
                                    error=error))
        wall = time.perf_counter() - wall
        share = other_cpu_share(start, wall)
        if args.device == 'cuda' and torch.cuda.is_available():
            machine = torch.cuda.get_device_name(0)
    table = markdown(rows)
    print(f'\n{machine}; torch {torch.__version__}; other processes used '
          f'{100 * share:.0f} % of the CPU\n')
    print(table)
    write_json(args.out, dict(
        machine=dict(cpu=cpu_model(), cores=os.cpu_count(),
                     device=args.device, name=machine,
                     threads=args.threads, torch=torch.__version__,
                     other_cpu_share=share),
        settings=dict(classes=args.classes, shots=args.shots,
                      amp=args.amp, tiny=args.tiny,
                      max_seconds=args.max_seconds),
        rows=rows))
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
