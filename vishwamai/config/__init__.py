"""Model configuration: one frozen dataclass, named presets, and the seed's dictionary format.

`ModelConfig` names every architecture choice; runtime settings (batch, steps, mesh) live
elsewhere. `PRESETS` holds the seed's four sizes, a CPU `tiny`/`small` pair, and public models
whose parameter counts equal the published ones.
"""
from vishwamai.config.base import (  # noqa: F401
    ACTIVATIONS, ATTENTION_IMPLS, DTYPES, FP8_SCALINGS, NORMS, PARAM_COMPONENTS, POSITIONS,
    REMAT_POLICIES, ROPE_SCALINGS, WEIGHT_QUANTS, ModelConfig)
from vishwamai.config.moe import (  # noqa: F401
    MOE_HF_MODEL_TYPES, MOE_IMPLS, QK_NORMS, ROUTER_SCORINGS)
from vishwamai.config.hf_keys import (  # noqa: F401
    HF_ARCHITECTURES, HF_MODEL_TYPES, HF_SIZE_KEYS, SEED_KEYS, _CAUSAL_LM, _GATED_ACTIVATIONS,
    _GPT2_ACTIVATIONS, _HF_DEFAULTS, _HF_REQUIRED, _IGNORED_KEYS, _hf_fields, _hf_int,
    _hf_model_type, _hf_refuse, _hf_rope, _hf_window, _read_hf_config, _to_hf)
from vishwamai.config.presets import (  # noqa: F401
    DENSE_PRESETS, HF_CONFIG_PARAMS, PRESETS, PUBLISHED_PARAMS, SEED_PRESETS, _llama, _seed, as_config,
    get_preset, hf_config, resolve_preset, seed_configs)
