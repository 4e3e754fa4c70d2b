"""Export an adapted model (CLIP visual tower + cache head) to TorchScript.

    python tools/export_torchscript.py CONFIG CHECKPOINT OUT.pt
        [--shape H W] [--batch-size B] [--device cpu] [--with-preprocess]
        [--no-freeze]

The exported module maps preprocessed images ``(B, 3, H, W)`` (the test
pipeline's output after the model's data preprocessor: RGB, CLIP mean/std)
to logits ``(B, N)``; with ``--with-preprocess`` it takes the raw 0-255 BGR
images the test pipeline packs and normalises them itself. Load it with
``torch.jit.load(OUT.pt)``; no tip_adapter_mm, MMPretrain or open_clip is
needed there.
"""
import argparse

import torch

from tip_adapter_mm.apis import (AdaptedModelForExport, TipAdapterInferencer,
                                 export_torchscript)
from tip_adapter_mm.apis.export import default_input_shape


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Export a Tip-Adapter checkpoint to TorchScript')
    parser.add_argument('config', help='the config the model was adapted with')
    parser.add_argument('checkpoint', help='checkpoint holding the cache')
    parser.add_argument('out', help='the TorchScript file to write (.pt)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the size '
                        'the visual tower was built for, e.g. 224 224)')
    parser.add_argument('--batch-size', type=int, default=2,
                        help='batch size of the example input to trace with')
    parser.add_argument('--device', default='cpu',
                        help="device to trace on, e.g. 'cpu', 'cuda:0'")
    parser.add_argument('--with-preprocess', action='store_true',
                        help='include BGR->RGB and mean/std normalisation')
    parser.add_argument('--no-freeze', action='store_true',
                        help='do not torch.jit.freeze the traced module')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model = TipAdapterInferencer(
        args.config, pretrained=args.checkpoint, device=args.device).model
    height, width = args.shape or default_input_shape(model)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(args.batch_size, 3, height, width,
                          generator=generator)
    if args.with_preprocess:
        example = (example * 60 + 120).clamp(0, 255)
    example = example.to(args.device)
    export_torchscript(
        model, example, args.out, with_preprocess=args.with_preprocess,
        freeze=not args.no_freeze)
    logits = torch.jit.load(args.out, map_location=args.device)(example)
    with torch.no_grad():
        expected = AdaptedModelForExport(model, args.with_preprocess)(example)
    diff = (logits - expected).abs().max().item()
    print(f'Saved {args.out}: ({args.batch_size}, 3, {height}, {width}) '
          f'-> {tuple(logits.shape)} logits, max |diff| vs PyTorch '
          f'{diff:.2e}')


if __name__ == '__main__':
    main()
