"""An optimizer over the trainable parameters only."""
import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableParamsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's default constructor, given only the parameters that
    require a gradient (Tip-Adapter-F: the cache keys), so the frozen CLIP
    towers are not in the optimizer at all."""

    def __call__(self, model: nn.Module) -> OptimWrapper:
        model = getattr(model, 'module', model)
        if self.paramwise_cfg:
            raise ValueError(
                'TrainableParamsOptimWrapperConstructor takes no '
                f'paramwise_cfg, got {self.paramwise_cfg}.')
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                f'{type(model).__name__} has no trainable parameter: for '
                'Tip-Adapter-F set model.head.train_cache_keys=True.')
        holder = nn.Module()
        holder.params = nn.ParameterList(trainable)
        return super().__call__(holder)
