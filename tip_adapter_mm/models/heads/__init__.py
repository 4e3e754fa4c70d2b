from .ape_head import APEHead, SelectedChannelsCache, select_channels
from .base_head import FewShotHead, SearchStage
from .cache_model import KeyValueCache
from .cache_only_head import CacheOnlyHead
from .clap_head import CLAPHead
from .clip_adapter_head import CLIPAdapterHead
from .clip_lora_head import CLIPLoRAHead
from .cocoop_head import CoCoOpHead
from .coop_head import CoOpHead
from .dual_cache_head import DualCacheTipAdapterHead
from .gda_head import GDAHead
from .linear_probe_head import LinearProbeHead
from .lp_plus_plus_head import LPPlusPlusHead
from .meta_adapter_head import MetaAdapterHead
from .maple_head import MaPLeHead
from .ncm_head import NCMHead
from .prolip_head import ProLIPHead
from .proker_head import ProKeRHead
from .taskres_head import TaskResHead
from .text_prototype_head import TextPrototypeHead
from .tip_adapter_head import TipAdapterHead, linear_grid
from .vpt_head import VPTHead
from .zero_shot_head import ZeroShotHead

__all__ = [
    'FewShotHead', 'SearchStage', 'KeyValueCache', 'ZeroShotHead',
    'TipAdapterHead', 'DualCacheTipAdapterHead', 'CacheOnlyHead', 'GDAHead',
    'APEHead', 'SelectedChannelsCache', 'select_channels', 'NCMHead',
    'linear_grid', 'LinearProbeHead', 'LPPlusPlusHead',
    'ProLIPHead', 'ProKeRHead',
    'CLIPAdapterHead', 'CLIPLoRAHead', 'TaskResHead', 'CLAPHead',
    'TextPrototypeHead',
    'CoOpHead', 'CoCoOpHead', 'VPTHead', 'MaPLeHead',
    'MetaAdapterHead'
]
