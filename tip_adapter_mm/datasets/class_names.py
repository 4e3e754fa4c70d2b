"""Class-name lists: shipped files and consistency checks."""
from pathlib import Path
from typing import Sequence, Tuple

CLASSNAMES_DIR = Path(__file__).parent / 'classnames'


def read_class_names(name: str) -> Tuple[str, ...]:
    """Class names shipped with the package, e.g. ``'imagenet'``."""
    path = CLASSNAMES_DIR / f'{name}.txt'
    if not path.is_file():
        available = sorted(p.stem for p in CLASSNAMES_DIR.glob('*.txt'))
        raise FileNotFoundError(
            f'No class-name file {path}; shipped lists: {available}.')
    return tuple(line.strip() for line in path.read_text().splitlines()
                 if line.strip())


def check_class_names(expected: Sequence[str], actual: Sequence[str],
                      expected_from: str, actual_from: str) -> None:
    """Raise ``ValueError`` showing the first differences of two lists."""
    expected, actual = list(expected), list(actual)
    if expected == actual:
        return
    diffs = [(i, e, a) for i, (e, a) in enumerate(zip(expected, actual))
             if e != a][:5]
    lines = [f'  class {i}: {e!r} ({expected_from}) vs {a!r} ({actual_from})'
             for i, e, a in diffs]
    raise ValueError(
        f'Class names of {actual_from} ({len(actual)} classes) do not match '
        f'{expected_from} ({len(expected)} classes). First differences:\n'
        + ('\n'.join(lines) if lines else
           f'  the first {min(len(expected), len(actual))} names agree; '
           'the lists differ in length.'))
