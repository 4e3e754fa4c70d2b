"""Class-name lists: shipped files, consistency checks and the names
prompted for a dataset's classes."""
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

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


#: A numeric prefix that orders folders (``00_``, ``01-``, ``7.``); not
#: digits followed by a space (``'2012 Tesla Model S'`` keeps its year).
NUMERIC_PREFIX = re.compile(r'^\d+[_\-.]+(?=\S)')

#: The prompt-name file looked for beside the data (``<data_root>/...``).
CLASSES_FILE = 'classes.txt'

#: Differences shown before the rest is counted.
MAX_SHOWN = 5


def has_numeric_prefix(name: str) -> bool:
    """Whether ``name`` starts with an ordering prefix like ``00_``."""
    return NUMERIC_PREFIX.match(name) is not None


def strip_numeric_prefix(name: str) -> str:
    """``'00_T-shirt'`` -> ``'T-shirt'``; other names unchanged."""
    return NUMERIC_PREFIX.sub('', name, count=1)


def default_prompt_names(classes: Sequence[str]) -> Tuple[str, ...]:
    """The names prompted for dataset classes without an override: the
    class names, without a numeric prefix when every one has one (folders
    named ``00_T-shirt``, ``01_Trouser``, ... to order them). Underscores
    become spaces later, in the prompts."""
    classes = tuple(classes)
    if classes and all(has_numeric_prefix(c) for c in classes):
        return tuple(strip_numeric_prefix(c) for c in classes)
    return classes


def read_classes_file(path: Union[str, Path]) -> Tuple[str, ...]:
    """Prompt names from a text file, one per line in label order (blank
    lines and surrounding spaces ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f'Class-name file {path} does not exist (expected one prompt '
            'name per line, in label order).')
    return tuple(line.strip() for line in path.read_text().splitlines()
                 if line.strip())


def _shown(items: Sequence[str]) -> str:
    head = ', '.join(repr(i) for i in items[:MAX_SHOWN])
    more = len(items) - MAX_SHOWN
    return head + (f' and {more} more' if more > 0 else '')


def _key(name: str) -> str:
    """A name compared loosely: no numeric prefix, no case, '_' = ' '."""
    return ' '.join(strip_numeric_prefix(name).replace('_', ' ').lower()
                    .split())


def resolve_prompt_names(
        classes: Sequence[str],
        override: Union[None, str, Sequence[str], Mapping[str, str]] = None,
        source: str = 'model.class_names',
        classes_file: Optional[Union[str, Path]] = None
) -> Tuple[Tuple[str, ...], List[str]]:
    """The names to prompt with for ``classes`` (the dataset's class names,
    in label order: the folder names of a folder dataset).

    Label order always comes from the dataset; an override only renames.

    Args:
        classes: The dataset's class names, in label order.
        override: ``None``; a list of prompt names in label order (as long
            as ``classes``); a mapping ``{class name: prompt name}`` (names
            it leaves out keep their default); or the path of a text file
            with one prompt name per line.
        source: Where ``override`` comes from, for messages.
        classes_file: Without an override, a ``classes.txt`` to read if it
            exists (e.g. ``<data_root>/classes.txt``).

    Returns:
        ``(prompt names, messages)``: one name per class, and lines for the
        log (``'WARNING: '`` starts a warning).

    Raises:
        ValueError: the override has another number of names than the
            dataset has classes, names classes that do not exist, or gives
            a class the name of another class (a shifted list); the message
            shows the first differences.
    """
    classes = tuple(classes)
    defaults = default_prompt_names(classes)
    messages: List[str] = []
    stripped = (f'Class names have numeric prefixes ({_shown(classes)}): '
                f'prompting without them ({_shown(defaults)}). Set '
                'model.class_names or write classes.txt to choose the names.')
    if override is None and classes_file is not None and Path(
            classes_file).is_file():
        override, source = str(classes_file), str(classes_file)
    if override is None:
        return defaults, [stripped] if defaults != classes else []
    if isinstance(override, (str, Path)):
        source = f'{source} ({override})' if source != str(
            override) else source
        messages.append(f'Prompt names read from {override}.')
        override = read_classes_file(override)
    if isinstance(override, Mapping):
        unknown = [k for k in override if k not in classes]
        if unknown:
            raise ValueError(
                f'{source} maps {len(unknown)} names that are not classes of '
                f'the dataset: {_shown(unknown)}. Its keys must be the '
                f'dataset\'s class names (folder names), e.g. '
                f'{_shown(classes)}.')
        bad = [k for k, v in override.items()
               if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ValueError(f'{source}: the prompt names of {_shown(bad)} '
                             'are not non-empty strings.')
        names = tuple(override.get(c, d) for c, d in zip(classes, defaults))
        if defaults != classes and len(override) < len(classes):
            messages.append(stripped.replace('prompting', 'prompting the '
                                             'names not mapped'))
    else:
        names = tuple(str(n) for n in override)
        if len(names) != len(classes):
            n = min(len(names), len(classes))
            rest = (f'classes without a name: {_shown(classes[n:])}'
                    if len(classes) > n else
                    f'names without a class: {_shown(names[n:])}')
            raise ValueError(
                f'{source} has {len(names)} names but the dataset has '
                f'{len(classes)} classes ({_shown(classes)}); give one '
                f'prompt name per class, in label order. From label {n} on, '
                f'{rest}.')
    # A name of another class at this label: the list is out of order.
    index = {}
    for i, c in enumerate(classes):
        index.setdefault(_key(c), i)
    shifted = [(i, n, index[_key(n)]) for i, n in enumerate(names)
               if index.get(_key(n), i) != i]
    if shifted:
        lines = [f'  label {i}: {n!r} given, but that is the name of class '
                 f'{j} ({classes[j]!r}); label {i} is {classes[i]!r}'
                 for i, n, j in shifted[:MAX_SHOWN]]
        raise ValueError(
            f'{source} does not follow the label order of the dataset (its '
            f'class names sorted, {len(shifted)} names out of place). First '
            'differences:\n' + '\n'.join(lines))
    prefixed = [n for n in names if has_numeric_prefix(n)]
    if prefixed:
        messages.append(
            f'WARNING: {source} keeps numeric prefixes in '
            f'{len(prefixed)} prompt names ({_shown(prefixed)}); they are '
            'prompted as written.')
    return names, messages


def find_data_root(dataset: Any) -> Optional[str]:
    """The ``data_root`` of a dataset, or of the one it wraps."""
    for _ in range(8):
        root = getattr(dataset, 'data_root', None)
        if root:
            return str(root)
        dataset = getattr(dataset, 'dataset', None)
        if dataset is None:
            return None
    return None
