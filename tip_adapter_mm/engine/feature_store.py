"""Stored features: encoded once, keyed by everything that determines them.

An entry is one file ``<root>/<name>_<key>.pth`` whose ``key`` hashes a JSON
description of what was encoded (the encoder configs and weight files, the
dataset, split, transforms, views and seed). The file holds the features,
the description itself and a digest of the tensors, so that a truncated,
damaged or foreign file is recognised and never used: it is renamed aside
(``.rejected``, nothing is deleted) and the features are encoded again.
A human-readable copy of the description sits beside it
(``<name>_<key>.json``).

Entries are written once: to a temporary file, then linked to their name,
which fails if another process got there first (its file is kept). Writers
of the same entry also take a lock (``<name>_<key>.lock``), so that a second
process waits for the first and then reads its file instead of encoding the
same images again.

Entries can be read through memory mapping (``read_features(...,
mmap=True)``): the tensors then live in the file's pages of the operating
system's page cache, mapped copy-on-write into the process, so that all the
processes of one machine that read one entry (the ranks of a distributed
run) share a single copy of it instead of holding one each. A process that
wrote into such a tensor would get a private copy of the page it wrote; the
file never changes.
"""
import contextlib
import hashlib
import json
import logging
import os
import os.path as osp
from typing import Any, Dict, Iterator, Optional

import torch
from mmengine.logging import print_log

from ..structures import EncodedFeatures

try:  # POSIX advisory locks; without them the write-once rule still holds
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

#: Layout of the entry files; part of every key, so a new layout never
#: reads an old file.
FORMAT = 'tip_adapter_mm.stored_features.v2'


class StoredFeaturesError(RuntimeError):
    """A stored-feature file that cannot be used, naming it and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f'Stored features {path!r} cannot be used: {reason}')
        self.path = path
        self.reason = reason


def describe_checkpoint(path: Optional[str]) -> Any:
    """A local weight file's identity (absolute path, size, mtime); a
    download tag as it is."""
    if path and osp.isfile(path):
        stat = os.stat(path)
        return dict(path=osp.abspath(path), size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns)
    return path


def description_text(description: Dict[str, Any]) -> str:
    """The canonical JSON of a description (sorted keys)."""
    return json.dumps(dict(description, format=FORMAT), sort_keys=True,
                      default=repr)


def tensor_digest(features: EncodedFeatures) -> str:
    """SHA-256 of the labels' and features' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in (features.labels, ) + tuple(features.feats):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{tuple(tensor.shape)}|{tensor.dtype}|'.encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def read_features(path: str,
                  description: Optional[Dict[str, Any]] = None,
                  mmap: bool = False) -> EncodedFeatures:
    """Read and verify an entry file.

    Args:
        path: The ``.pth`` file.
        description: What it must hold; None accepts any description.
        mmap: Map the file into memory instead of reading it: the tensors
            are views of the page cache, shared by every process that maps
            the same file (see the module). The digest is still checked
            (reading every byte once, through the shared pages). Where the
            file cannot be mapped (a filesystem without memory mapping, a
            file in torch's old non-zip format), it is read as with
            ``mmap=False`` and a note says so.

    Returns:
        EncodedFeatures: one ``(S, C_e)`` float tensor per visual encoder
        and the ``(S, )`` labels, as stored (no copies are made of the
        mapped tensors).

    Raises:
        StoredFeaturesError: unreadable (truncated, not a torch file), not
            this package's layout, a description other than ``description``,
            or tensors that do not match their digest.
    """
    data = _load_file(path, mmap)
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        found = data.get('format') if isinstance(data, dict) else type(
            data).__name__
        raise StoredFeaturesError(
            path, f'its layout is {found!r}, expected {FORMAT!r} (a file '
            'this version of tip_adapter_mm wrote).')
    if description is not None:
        expected = description_text(description)
        if data.get('description') != expected:
            raise StoredFeaturesError(
                path, 'it holds features of something else (another '
                'encoder, dataset, transform or seed): its description '
                f'{_difference(data.get("description"), expected)}.')
    try:
        features = EncodedFeatures(tuple(data['feats']), data['labels'])
    except (KeyError, TypeError, ValueError) as err:
        raise StoredFeaturesError(path, f'its tensors are malformed: '
                                  f'{err}.') from err
    if tensor_digest(features) != data.get('digest'):
        raise StoredFeaturesError(
            path, 'its tensors do not match their digest: the file was '
            'damaged after it was written.')
    return features


def _load_file(path: str, mmap: bool) -> Any:
    """``torch.load`` of an entry (weights only, on the CPU), memory-mapped
    if ``mmap`` and possible, else read."""
    if mmap:
        try:
            return torch.load(path, map_location='cpu', weights_only=True,
                              mmap=True)
        except Exception as err:  # not mappable, or damaged: try a read
            mmap_error = err
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # truncated zip, garbage, foreign pickle...
        raise StoredFeaturesError(
            path, f'it does not load ({type(err).__name__}: {err}); the file '
            'is truncated or damaged.') from err
    if mmap:
        print_log(
            f'Stored features {path!r} could not be memory-mapped '
            f'({type(mmap_error).__name__}: {mmap_error}); they were read '
            'into this process\'s memory instead (one copy per process).',
            logger='current', level=logging.WARNING)
    return data


def _difference(found: Any, expected: str) -> str:
    """Where a stored description differs from the expected one."""
    try:
        found_dict, expected_dict = json.loads(found), json.loads(expected)
    except (TypeError, ValueError):
        return 'is missing'
    keys = sorted(set(found_dict) | set(expected_dict))
    differ = [k for k in keys if found_dict.get(k) != expected_dict.get(k)]
    return 'differs in ' + ', '.join(
        f'{k!r} (stored {json.dumps(found_dict.get(k), sort_keys=True)[:200]}'
        f', expected {json.dumps(expected_dict.get(k), sort_keys=True)[:200]})'
        for k in differ[:3])


class FeatureStore:
    """Entries ``<root>/<name>_<key>.pth`` (see the module).

    Args:
        root: The folder; created on the first write.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    @staticmethod
    def key(description: Dict[str, Any]) -> str:
        """16 hex digits of the SHA-256 of the description's JSON."""
        return hashlib.sha256(
            description_text(description).encode()).hexdigest()[:16]

    def path(self, name: str, description: Dict[str, Any]) -> str:
        """The entry file of ``description`` under ``name`` (e.g. 'test')."""
        return osp.join(self.root, f'{name}_{self.key(description)}.pth')

    def load(self, name: str, description: Dict[str, Any],
             mmap: bool = False) -> Optional[EncodedFeatures]:
        """The stored features of ``description``; None when there are none
        or the file cannot be used (then it is renamed aside with a
        warning naming it, and the caller encodes again). ``mmap``: see
        :func:`read_features`."""
        path = self.path(name, description)
        if not osp.isfile(path):
            return None
        try:
            return read_features(path, description, mmap=mmap)
        except StoredFeaturesError as err:
            aside = self._set_aside(path)
            print_log(f'{err} It was renamed to {aside!r} and the features '
                      'are encoded again.', logger='current',
                      level=logging.WARNING)
            return None

    def save(self, name: str, description: Dict[str, Any],
             features: EncodedFeatures) -> str:
        """Write an entry once; if another process wrote it first, its file
        is kept. Returns the entry's path."""
        path = self.path(name, description)
        os.makedirs(self.root, exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        feats = tuple(f.detach().cpu().contiguous() for f in features.feats)
        labels = features.labels.detach().cpu().contiguous()
        torch.save(
            dict(format=FORMAT,
                 description=description_text(description),
                 digest=tensor_digest(EncodedFeatures(feats, labels)),
                 labels=labels,
                 feats=list(feats)), tmp)
        try:
            os.link(tmp, path)  # fails if the entry exists: write once
        except FileExistsError:
            pass
        except OSError:  # no hard links on this filesystem
            if not osp.exists(path):
                os.replace(tmp, path)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
        sidecar = path[:-len('.pth')] + '.json'
        with open(f'{sidecar}.tmp{os.getpid()}', 'w') as f:
            json.dump(json.loads(description_text(description)), f,
                      indent=2, sort_keys=True)
        os.replace(f'{sidecar}.tmp{os.getpid()}', sidecar)
        return path

    @contextlib.contextmanager
    def lock(self, name: str, description: Dict[str, Any]) -> Iterator[None]:
        """Hold the entry's lock: other processes that ask for it wait."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        os.makedirs(self.root, exist_ok=True)
        lock_path = self.path(name, description)[:-len('.pth')] + '.lock'
        with open(lock_path, 'a') as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print_log(
                    f'Waiting for another process that is writing '
                    f'{self.path(name, description)!r}.', logger='current')
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _set_aside(path: str) -> str:
        """Rename a rejected file to a free ``<path>.rejected[.N]``."""
        aside, n = f'{path}.rejected', 0
        while osp.exists(aside):
            n += 1
            aside = f'{path}.rejected.{n}'
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another process moved it already
            pass
        return aside
