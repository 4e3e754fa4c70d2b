"""Classify images with a saved adapted model.

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE ...]
        [--device cpu] [--batch-size N] [--out results.json]

Prints one line per image: path, class, score (softmax probability).
An IMAGE that is a directory stands for the files in it.
"""
import argparse
import json
import os
import os.path as osp
from typing import List

from tip_adapter_mm.apis import TipAdapterInferencer
from tip_adapter_mm.quiet import quiet_warnings


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Predict with a Tip-Adapter / Tip-Adapter-F checkpoint')
    parser.add_argument('config', help='the config the model was adapted '
                        'with (builds the CLIP tower and the test pipeline)')
    parser.add_argument('checkpoint', help='checkpoint holding the cache '
                        '(e.g. work_dirs/<config>/final_searched.pth)')
    parser.add_argument('images', nargs='+', help='image files or folders')
    parser.add_argument('--device', default=None,
                        help="e.g. 'cpu', 'cuda:0' (default: CUDA if "
                        'available, else CPU)')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward pass')
    parser.add_argument('--out', help='also write the results to this '
                        'JSON file (all class scores included)')
    return parser.parse_args()


def expand(images: List[str]) -> List[str]:
    """Paths, with each directory replaced by its files (sorted)."""
    paths = []
    for image in images:
        if osp.isdir(image):
            files = (osp.join(image, f) for f in sorted(os.listdir(image)))
            paths.extend(f for f in files if osp.isfile(f))
        else:
            paths.append(image)
    return paths


def main() -> None:
    quiet_warnings()
    args = parse_args()
    inferencer = TipAdapterInferencer(
        args.config, pretrained=args.checkpoint, device=args.device)
    paths = expand(args.images)
    results = inferencer(paths, batch_size=args.batch_size)
    records = []
    for path, result in zip(paths, results):
        name = result.get('pred_class', str(result['pred_label']))
        print(f'{path}\t{name}\t{result["pred_score"]:.4f}')
        records.append(dict(
            img_path=path,
            pred_label=int(result['pred_label']),
            pred_class=result.get('pred_class'),
            pred_score=float(result['pred_score']),
            pred_scores=[float(s) for s in result['pred_scores']]))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(config=args.config, checkpoint=args.checkpoint,
                           classes=inferencer.classes, results=records),
                      f, indent=2)


if __name__ == '__main__':
    main()
