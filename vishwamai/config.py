"""Model configuration: one frozen dataclass, named presets, and the seed's dictionary format.

`ModelConfig` names every architecture choice; runtime settings (batch, steps, mesh) live
elsewhere. `PRESETS` holds the seed's four sizes, a CPU `tiny`/`small` pair, and public models
whose parameter counts equal the published ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import jax.numpy as jnp

DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}
ACTIVATIONS = ("gelu", "swiglu", "geglu", "relu")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned", "none")
ATTENTION_IMPLS = ("auto", "reference", "flash", "xla", "cudnn", "pallas_tpu")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_proj")
FP8_SCALINGS = ("tensor", "row", "block")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only transformer.

    Shape letters (see the book's notation page): V vocab_size, L num_layers, D hidden_dim,
    N num_heads, K num_kv_heads, H head_dim, F mlp_dim. N*H may differ from D: the attention
    projections map D -> N*H and back.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_dim: int
    mlp_dim: int
    max_seq_len: int = 2048
    num_kv_heads: int | None = None  # None: = num_heads (multi-head); < num_heads: GQA/MQA
    mlp_activation: str = "gelu"  # gelu/relu: 2 matrices; swiglu/geglu: 3 (gate, up, down)
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    position: str = "rope"  # rope | learned (absolute table of max_seq_len rows) | none
    rope_theta: float = 10_000.0
    tie_embeddings: bool = True  # output head reuses the token embedding
    use_bias: bool = False  # biases in projections, MLP and LayerNorm
    dropout_rate: float = 0.0
    dtype: str = "float32"  # compute dtype (activations, matmul inputs, logits)
    param_dtype: str = "float32"  # storage dtype of parameters
    attention_impl: str = "auto"
    remat: str = "none"
    use_fp8: bool = False  # projections and MLP through fp8_gemm_optimized
    fp8_scaling: str = "tensor"
    # Run the L blocks as one `nn.scan` over weights stacked on a leading 'layers' axis: the
    # compiler sees one block, so compile time stays flat in L. The parameter tree changes
    # (`layers/...` with [L, ...] leaves instead of `layer_0/...`); `stack_layers` /
    # `unstack_layers` in `vishwamai.transformer` convert between the two, and both layouts
    # compute the same function from the same numbers. Default choice: see PRESETS.
    scan_layers: bool = False
    name: str = "custom"

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raises `ValueError` naming the first invalid field and its value."""
        for f in ("vocab_size", "num_layers", "num_heads", "head_dim", "hidden_dim",
                  "mlp_dim", "max_seq_len", "num_kv_heads"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ModelConfig.{f} must be a positive int; got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} must be divisible by "
                f"num_kv_heads={self.num_kv_heads}")
        choices = {"mlp_activation": ACTIVATIONS, "norm": NORMS, "position": POSITIONS,
                   "attention_impl": ATTENTION_IMPLS, "remat": REMAT_POLICIES,
                   "fp8_scaling": FP8_SCALINGS}
        for f, allowed in choices.items():
            if getattr(self, f) not in allowed:
                raise ValueError(
                    f"ModelConfig.{f}={getattr(self, f)!r} is not one of {allowed}")
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in DTYPES:
                raise ValueError(
                    f"ModelConfig.{f}={getattr(self, f)!r} is not one of {tuple(DTYPES)}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"ModelConfig.head_dim={self.head_dim} must be even with position='rope'")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ModelConfig.dropout_rate must be in [0, 1); got {self.dropout_rate!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0; got {self.norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0; got {self.rope_theta!r}")
        for f in ("tie_embeddings", "use_bias", "use_fp8", "scan_layers"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"ModelConfig.{f} must be a bool; got {getattr(self, f)!r}")

    # ------------------------------------------------------------------ derived
    @property
    def q_dim(self) -> int:
        """N*H: width of the concatenated query heads."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """K*H: width of the concatenated key (or value) heads."""
        return self.num_kv_heads * self.head_dim

    @property
    def gated_mlp(self) -> bool:
        return self.mlp_activation in ("swiglu", "geglu")

    @property
    def enhanced(self) -> bool:
        """The seed's 'enhanced' family: RMSNorm and rotary positions."""
        return self.norm == "rmsnorm" and self.position == "rope"

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes) -> "ModelConfig":
        """A copy with `changes` applied (validated).

        A multi-head config (K == N) stays multi-head when only `num_heads` changes.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"ModelConfig.replace got unknown fields {sorted(unknown)}")
        if ("num_heads" in changes and "num_kv_heads" not in changes
                and self.num_kv_heads == self.num_heads):
            changes["num_kv_heads"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check_seq_len(self, seq_len: int) -> None:
        """Raises `ValueError` if a call would exceed `max_seq_len`."""
        if seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds ModelConfig.max_seq_len={self.max_seq_len}")

    # ------------------------------------------------------------------ seed format
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "ModelConfig") -> "ModelConfig":
        """Builds a config from a dict with this class's field names or the seed's keys.

        The seed's switches map onto fields: `use_enhanced` (True: RMSNorm, RoPE, flash attention;
        False: LayerNorm, learned positions, reference attention), then `use_rotary`,
        `use_rms_norm`, `use_flash_attn` override the part they name. Hugging Face style names
        (`hidden_size`, `num_hidden_layers`, ...) are accepted as aliases. `batch_size`, which the
        seed's benchmark adds to its config, is a property of the input, not of the model: it is
        accepted and ignored. Any other key raises `ValueError`.
        """
        if isinstance(d, ModelConfig):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a ModelConfig or a dict; got {type(d).__name__}")
        d = dict(d)
        for alias, name in _ALIASES.items():
            if alias in d:
                if name in d and d[name] != d[alias]:
                    raise ValueError(f"config gives both {alias}={d[alias]!r} and {name}={d[name]!r}")
                d[name] = d.pop(alias)
        for k in _IGNORED_KEYS:
            d.pop(k, None)
        if "preset" in d:
            base = get_preset(d.pop("preset")).to_dict()
            base.update(d)
            d = base
        enhanced = d.pop("use_enhanced", None)
        rotary = d.pop("use_rotary", None)
        rms = d.pop("use_rms_norm", None)
        flash = d.pop("use_flash_attn", None)
        for key, val in (("use_enhanced", enhanced), ("use_rotary", rotary),
                         ("use_rms_norm", rms), ("use_flash_attn", flash)):
            if val is not None and not isinstance(val, bool):
                raise ValueError(f"config key {key!r} must be a bool; got {val!r}")
        if enhanced is not None:
            d.setdefault("norm", "rmsnorm" if enhanced else "layernorm")
            d.setdefault("position", "rope" if enhanced else "learned")
            d.setdefault("attention_impl", "flash" if enhanced else "reference")
        if rotary is not None:
            d["position"] = "rope" if rotary else "learned"
        if rms is not None:
            d["norm"] = "rmsnorm" if rms else "layernorm"
        if flash is not None:
            d["attention_impl"] = "flash" if flash else "reference"
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(
                f"unknown config keys {unknown}; accepted: {sorted(fields | set(SEED_KEYS))}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"config is missing required keys {missing}")
        return cls(**d)


SEED_KEYS = ("vocab_size", "num_layers", "num_heads", "head_dim", "hidden_dim", "mlp_dim",
             "max_seq_len", "dropout_rate", "use_enhanced", "use_rotary", "use_flash_attn",
             "use_rms_norm", "dtype")
_ALIASES = {
    "hidden_size": "hidden_dim",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "intermediate_size": "mlp_dim",
    "max_position_embeddings": "max_seq_len",
}
_IGNORED_KEYS = ("batch_size",)


def _seed(name, **dims) -> ModelConfig:
    """The seed's presets: its dimensions, the architecture its parameter formula describes
    (pre-norm, 2-matrix GELU MLP, tied embedding, no biases), and its enhanced switches."""
    return ModelConfig(vocab_size=32000, max_seq_len=2048, mlp_activation="gelu",
                       norm="rmsnorm", position="rope", tie_embeddings=True, use_bias=False,
                       dropout_rate=0.1, dtype="bfloat16", attention_impl="flash",
                       name=name, **dims)


def _llama(name, **dims) -> ModelConfig:
    return ModelConfig(mlp_activation="swiglu", norm="rmsnorm", norm_eps=1e-5, position="rope",
                       tie_embeddings=False, use_bias=False, name=name, **dims)


PRESETS: dict[str, ModelConfig] = {
    # Runs a forward pass on a laptop CPU in milliseconds; byte-level vocabulary.
    "tiny": ModelConfig(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                        hidden_dim=64, mlp_dim=172, max_seq_len=256, mlp_activation="swiglu",
                        norm="rmsnorm", position="rope", tie_embeddings=False, name="tiny"),
    # The CPU benchmark model.
    "small": ModelConfig(vocab_size=32000, num_layers=8, num_heads=8, head_dim=64, hidden_dim=512,
                         mlp_dim=1408, max_seq_len=2048, mlp_activation="swiglu", norm="rmsnorm",
                         position="rope", tie_embeddings=False, name="small"),
    "base": _seed("base", num_layers=12, num_heads=12, head_dim=64, hidden_dim=768, mlp_dim=3072),
    "large": _seed("large", num_layers=24, num_heads=16, head_dim=96, hidden_dim=1536,
                   mlp_dim=6144),
    "xl": _seed("xl", num_layers=32, num_heads=24, head_dim=128, hidden_dim=2048, mlp_dim=8192),
    "xxl": _seed("xxl", num_layers=40, num_heads=32, head_dim=128, hidden_dim=4096,
                 mlp_dim=16384),
    # GPT-2 small (Radford et al. 2019; HF `gpt2`): 124,439,808 parameters.
    "gpt2": ModelConfig(vocab_size=50257, num_layers=12, num_heads=12, head_dim=64,
                        hidden_dim=768, mlp_dim=3072, max_seq_len=1024, mlp_activation="gelu",
                        norm="layernorm", position="learned", tie_embeddings=True,
                        use_bias=True, name="gpt2"),
    # Llama-2-7B (Touvron et al. 2023; HF `meta-llama/Llama-2-7b-hf`): 6,738,415,616.
    "llama2_7b": _llama("llama2_7b", vocab_size=32000, num_layers=32, num_heads=32,
                        head_dim=128, hidden_dim=4096, mlp_dim=11008, max_seq_len=4096),
    # Llama-3-8B (Meta 2024; HF `meta-llama/Meta-Llama-3-8B`): 8,030,261,248.
    "llama3_8b": _llama("llama3_8b", vocab_size=128256, num_layers=32, num_heads=32,
                        num_kv_heads=8, head_dim=128, hidden_dim=4096, mlp_dim=14336,
                        max_seq_len=8192, rope_theta=500_000.0),
    # TinyLlama-1.1B (Zhang et al. 2024; HF `TinyLlama/TinyLlama-1.1B-...`): 1,100,048,384.
    "tinyllama_1_1b": _llama("tinyllama_1_1b", vocab_size=32000, num_layers=22, num_heads=32,
                             num_kv_heads=4, head_dim=64, hidden_dim=2048, mlp_dim=5632,
                             max_seq_len=2048),
}

# Parameter counts as published (model cards / the papers' reference implementations).
PUBLISHED_PARAMS = {
    "gpt2": 124_439_808,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "tinyllama_1_1b": 1_100_048_384,
}

SEED_PRESETS = ("base", "large", "xl", "xxl")


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; `ValueError` listing the names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; accepted: {sorted(PRESETS)}")
    return PRESETS[name]


def seed_configs() -> dict[str, dict]:
    """The seed notebook's `create_model_configs()`, verbatim: four dicts in its key format."""
    dims = {
        "base": dict(vocab_size=32000, num_layers=12, num_heads=12, head_dim=64,
                     hidden_dim=768, mlp_dim=3072, max_seq_len=2048),
        "large": dict(vocab_size=32000, num_layers=24, num_heads=16, head_dim=96,
                      hidden_dim=1536, mlp_dim=6144, max_seq_len=2048),
        "xl": dict(vocab_size=32000, num_layers=32, num_heads=24, head_dim=128,
                   hidden_dim=2048, mlp_dim=8192, max_seq_len=2048),
        "xxl": dict(vocab_size=32000, num_layers=40, num_heads=32, head_dim=128,
                    hidden_dim=4096, mlp_dim=16384, max_seq_len=2048),
    }
    for c in dims.values():
        c.update(dropout_rate=0.1, use_enhanced=True, use_rotary=True, use_flash_attn=True,
                 use_rms_norm=True, dtype="bfloat16")
    return dims


def as_config(config: "ModelConfig | Mapping[str, Any] | str") -> ModelConfig:
    """Anything that names a model -> its `ModelConfig`: the config itself, a preset name, or a
    dict (this class's fields or the seed's keys, see `ModelConfig.from_dict`).

    The one resolver every entry point uses; errors name the accepted forms.
    """
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(config, (ModelConfig, Mapping)):
        return ModelConfig.from_dict(config)
    raise ValueError(f"config must be a ModelConfig, a preset name or a dict; got "
                     f"{type(config).__name__}")


def resolve_preset(name: str = "auto", *, cpu: str = "tiny", accelerator: str = "base") -> str:
    """`'auto'` -> a preset sized for the backend JAX runs on (`cpu` on CPU, else `accelerator`).

    Any other name is checked and returned, so a chapter's `preset` parameter accepts both.
    """
    if name == "auto":
        import jax

        return cpu if jax.default_backend() == "cpu" else accelerator
    get_preset(name)
    return name
