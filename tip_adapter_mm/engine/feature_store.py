"""Saved features, keyed by everything that determines them."""
import hashlib
import json
import os
import os.path as osp
from typing import Any, Dict, Optional

import torch


def describe_checkpoint(path: Optional[str]) -> Any:
    """A local checkpoint's identity (path, size, mtime); a tag as is."""
    if path and osp.isfile(path):
        stat = os.stat(path)
        return dict(path=osp.abspath(path), size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns)
    return path


class FeatureStore:
    """Tensors saved under ``root`` as ``<name>_<key>.pth``.

    ``key`` is a hash of a JSON description (model, data, pipeline, seeds)
    written beside the file as ``<name>_<key>.json``. A file is written to a
    temporary name and renamed, so an interrupted run never leaves a partial
    file, and an existing file is never overwritten: the same key means the
    same content.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    @staticmethod
    def key(description: Dict[str, Any]) -> str:
        text = json.dumps(description, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def path(self, name: str, key: str) -> str:
        return osp.join(self.root, f'{name}_{key}.pth')

    def load(self, name: str, key: str) -> Optional[Dict[str, torch.Tensor]]:
        path = self.path(name, key)
        if not osp.isfile(path):
            return None
        return torch.load(path, map_location='cpu', weights_only=True)

    def save(self, name: str, key: str, tensors: Dict[str, torch.Tensor],
             description: Dict[str, Any]) -> str:
        path = self.path(name, key)
        if osp.exists(path):
            return path
        os.makedirs(self.root, exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        torch.save({k: v.cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
        with open(path[:-len('.pth')] + '.json', 'w') as f:
            json.dump(description, f, indent=2, sort_keys=True, default=repr)
        return path
