"""Cheap checks of a run's data, made before anything is encoded."""
import os.path as osp
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

from PIL import Image, UnidentifiedImageError

#: Bytes read from the end of a JPEG / PNG to find its end marker.
TAIL_BYTES = 4096

#: Details listed under one problem before the rest is counted.
MAX_DETAILS = 10


def plural(count: int, noun: str) -> str:
    """``'1 class'``, ``'2 classes'``, ``'3 images'``."""
    if count == 1:
        return f'{count} {noun}'
    return f'{count} {noun}es' if noun.endswith('s') else f'{count} {noun}s'


def image_problem(path: str) -> Optional[str]:
    """What is wrong with an image file, or None: it must exist, its header
    must open with PIL (format and size, no decode of the pixels), and a
    JPEG must end with its end-of-image marker (``FF D9``), a PNG with its
    ``IEND`` chunk, within its last :data:`TAIL_BYTES` bytes (a file cut
    short has neither). Paths of remote storage (``scheme://``) are not
    checked."""
    if '://' in str(path):
        return None
    try:
        with Image.open(path) as img:
            width, height = img.size
            fmt = img.format
    except FileNotFoundError:
        return 'does not exist'
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return f'cannot be opened as an image ({err})'
    if width < 1 or height < 1:
        return f'has size {width}x{height}'
    marker = {'JPEG': b'\xff\xd9', 'PNG': b'IEND'}.get(fmt)
    if marker is not None:
        with open(path, 'rb') as f:
            f.seek(max(0, osp.getsize(path) - TAIL_BYTES))
            if marker not in f.read():
                return (f'is truncated: no {fmt} end marker '
                        f'({marker.hex(" ").upper()}) at its end')
    return None


def image_problems(paths: Sequence[str],
                   num_threads: int = 8) -> Dict[str, str]:
    """:func:`image_problem` of each path (headers are read by
    ``num_threads`` threads): ``{path: problem}`` of the bad ones, in the
    order of ``paths``."""
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        found = list(pool.map(image_problem, paths))
    return {p: f for p, f in zip(paths, found) if f is not None}


class DataProblems:
    """Problems found in a run's data, raised together as one error."""

    def __init__(self) -> None:
        self.problems: List[str] = []

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def add(self, title: str, details: Sequence[str] = ()) -> None:
        """One problem: a line, and details under it (the first
        :data:`MAX_DETAILS` shown, the rest counted)."""
        first, *rest = title.rstrip().splitlines()
        lines = [first] + [f'     {line.strip()}' for line in rest]
        lines += [f'     {d}' for d in details[:MAX_DETAILS]]
        if len(details) > MAX_DETAILS:
            lines.append(f'     ... and {len(details) - MAX_DETAILS} more')
        self.problems.append('\n'.join(lines))

    def message(self) -> str:
        numbered = [f'  {i}. {p}' for i, p in enumerate(self.problems, 1)]
        return (f'The data of this run has {len(self.problems)} '
                f'problem{"s" if len(self.problems) > 1 else ""}, found '
                'before anything was encoded:\n' + '\n'.join(numbered))

    def raise_if_any(self) -> None:
        """ValueError listing every problem, if there is one."""
        if self.problems:
            raise ValueError(self.message())
