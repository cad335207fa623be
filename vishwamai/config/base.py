"""`ModelConfig`, the frozen dataclass that names every architecture choice, and the tables of
accepted values its fields are checked against (dtypes, activations, norms, positions,
attention implementations, remat policies, fp8 scalings, RoPE scalings, parameter components).
Its readers of other formats (`from_dict`, `from_hf`, `to_hf`) use the key tables in
`vishwamai.config.hf_keys` and the presets in `vishwamai.config.presets`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import jax.numpy as jnp

from vishwamai import validate
from vishwamai.config.moe import validate_moe


DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}
# gelu: the tanh approximation (GPT-2's `gelu_new`); gelu_exact: the erf form (torch's default).
ACTIVATIONS = ("gelu", "gelu_exact", "swiglu", "geglu", "relu")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned", "none")
ATTENTION_IMPLS = ("auto", "reference", "flash", "xla", "cudnn", "pallas_tpu")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_proj")
FP8_SCALINGS = ("tensor", "row", "block")
# Weight-only storage of the projection kernels (vishwamai.kernels.quant; vishwamai.quant).
WEIGHT_QUANTS = ("none", "int8", "fp8")
# The disjoint parameter components whose sum is the total (`analysis.count_params` computes
# them from the config, `VishwamAI.param_breakdown` reads them off the real tree).
PARAM_COMPONENTS = ("embedding", "positions", "attention_q", "attention_k", "attention_v",
                    "attention_o", "mlp", "norms", "head")
ROPE_SCALINGS = ("none", "linear", "llama3")  # see vishwamai.layers.rope.rope_inv_freq


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only transformer.

    Shape letters (see the book's notation page): V vocab_size, L num_layers, D hidden_dim,
    N num_heads, K num_kv_heads, H head_dim, F mlp_dim. N*H may differ from D: the attention
    projections map D -> N*H and back.

    `scan_layers` runs the L blocks as one `nn.scan` over weights (and KV cache) stacked on a
    leading 'layers' axis: the compiler sees one block, so compile time stays flat in L.
    Both layouts compute the same function from the same numbers; the parameter tree is
    `layers/...` with [L, ...] leaves instead of `layer_0/...` (`vishwamai.transformer.
    stack_layers` / `unstack_layers` convert, `VishwamAI.restore` reads either).
    It is off in every preset. Measured on this project's 2-core CPU host (chapter 5,
    `book/results/compile_time.json`): scanning cuts the CPU seconds of compiling a train
    step of `llama2_7b` (L=32) 3.7x and `base` (L=12) 1.7x; ahead of time for a TPU v5e 4x4
    slice `base` 2.8x, and the unrolled `llama2_7b` FSDP step does not fit at all (29 GB of
    temporaries per 16 GB chip; scanned: 13 GB). Below ~8 layers scanning compiles slower
    (tiny, L=2: 1.4x), a tiny step also runs ~1.4x slower scanned (small, base: within
    noise), XLA's `cost_analysis()` counts the loop body once (one layer's FLOPs), and the
    chapters, tests and checkpoint conversion read `layer_i` trees. So the presets keep the
    unrolled tree and a caller turns scanning on where compile time or memory dominates, as
    ahead-of-time TPU compilation of the deep presets does:
    `get_preset("llama2_7b").replace(scan_layers=True)`.
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
    # Context-extension scaling of the RoPE frequencies (Hugging Face's `rope_scaling`):
    # none | linear (all frequencies / factor) | llama3 (Llama 3.1's banded rule, which also
    # reads the two freq factors and the pre-training context length).
    rope_scaling: str = "none"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    tie_embeddings: bool = True  # output head reuses the token embedding
    use_bias: bool = False  # biases in projections, MLP and LayerNorm
    qkv_bias: bool = False  # biases on the q, k, v projections even without use_bias (Qwen2)
    dropout_rate: float = 0.0
    dtype: str = "float32"  # compute dtype (activations, matmul inputs, logits)
    param_dtype: str = "float32"  # storage dtype of parameters
    attention_impl: str = "auto"
    remat: str = "none"
    use_fp8: bool = False  # projections and MLP through fp8_gemm_optimized
    fp8_scaling: str = "tensor"
    weight_quant: str = "none"  # WEIGHT_QUANTS: kernels stored int8/fp8 + per-channel scales
    scan_layers: bool = False  # the L blocks as one nn.scan; see the class docstring
    qk_norm: str = "none"  # QK_NORMS: RMSNorm on queries and keys before RoPE
    # Mixture of experts (vishwamai.layers.moe); num_experts=0: the dense MLP in every block.
    num_experts: int = 0  # E routed experts
    num_experts_per_tok: int = 2  # K experts each token is sent to (top-k)
    moe_mlp_dim: int | None = None  # F of one routed expert; None: mlp_dim
    first_dense_layers: int = 0  # blocks before the first MoE block keep the dense MLP
    num_shared_experts: int = 0  # experts every token goes through
    shared_expert_dim: int | None = None  # their total width; None: num_shared_experts * F
    shared_expert_gate: bool = False  # shared output times sigmoid(x w) (Qwen2-MoE)
    router_scoring: str = "softmax"  # ROUTER_SCORINGS
    norm_topk_prob: bool = True  # renormalise the K chosen weights to sum to 1
    router_n_group: int = 1  # group-limited routing (DeepSeek): experts in n groups ...
    router_topk_group: int = 1  # ... of which this many may be chosen from
    routed_scaling_factor: float = 1.0  # multiplies the routed weights (DeepSeek)
    router_bias: bool = False  # per-expert selection bias (aux-loss-free balancing)
    moe_impl: str = "dropless"  # MOE_IMPLS
    capacity_factor: float = 1.25  # slots per expert = ceil(cf * tokens * K / E) (capacity)
    router_aux_loss_coef: float = 0.0  # weight of the load-balancing loss in `loss` / `fit`
    router_z_loss_coef: float = 0.0  # weight of the router z-loss
    name: str = "custom"

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raises `InputError` (a `ValueError`) naming the first invalid field and its value."""
        for f in ("vocab_size", "num_layers", "num_heads", "head_dim", "hidden_dim",
                  "mlp_dim", "max_seq_len", "num_kv_heads"):
            validate.positive_int(f"ModelConfig.{f}", getattr(self, f))
        if self.num_heads % self.num_kv_heads:
            raise validate.InputError(
                f"ModelConfig.num_heads={self.num_heads} must be divisible by "
                f"num_kv_heads={self.num_kv_heads}")
        choices = {"mlp_activation": ACTIVATIONS, "norm": NORMS, "position": POSITIONS,
                   "attention_impl": ATTENTION_IMPLS, "remat": REMAT_POLICIES,
                   "fp8_scaling": FP8_SCALINGS, "rope_scaling": ROPE_SCALINGS,
                   "weight_quant": WEIGHT_QUANTS,
                   "dtype": tuple(DTYPES), "param_dtype": tuple(DTYPES)}
        for f, allowed in choices.items():
            validate.one_of(f"ModelConfig.{f}", getattr(self, f), allowed)
        if self.position == "rope" and self.head_dim % 2:
            raise validate.InputError(
                f"ModelConfig.head_dim={self.head_dim} must be even with position='rope'")
        validate.fraction("ModelConfig.dropout_rate", self.dropout_rate)
        validate.positive("ModelConfig.norm_eps", self.norm_eps)
        validate.positive("ModelConfig.rope_theta", self.rope_theta)
        for f in ("tie_embeddings", "use_bias", "qkv_bias", "use_fp8", "scan_layers"):
            validate.boolean(f"ModelConfig.{f}", getattr(self, f))
        validate_moe(self)
        if not isinstance(self.name, str):
            validate.fail("ModelConfig.name", self.name, "a str", type_error=True)
        if self.rope_scaling != "none":
            for f in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
                validate.positive(f"ModelConfig.{f}", getattr(self, f))
            if self.rope_scaling == "llama3":
                if not self.rope_high_freq_factor > self.rope_low_freq_factor:
                    raise validate.InputError(
                        f"ModelConfig.rope_high_freq_factor={self.rope_high_freq_factor} must "
                        f"exceed rope_low_freq_factor={self.rope_low_freq_factor}")
                validate.positive_int("ModelConfig.rope_original_max_len", self.rope_original_max_len)

    # ------------------------------------------------------------------ derived
    @property
    def expert_mlp_dim(self) -> int:
        """F of one routed expert (`moe_mlp_dim`, else `mlp_dim`)."""
        return self.moe_mlp_dim or self.mlp_dim

    @property
    def num_moe_layers(self) -> int:
        """Blocks whose feed-forward is the mixture of experts."""
        return self.num_layers - self.first_dense_layers if self.num_experts else 0

    @property
    def q_dim(self) -> int:
        """N*H: width of the concatenated query heads."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """K*H: width of the concatenated key (or value) heads."""
        return self.num_kv_heads * self.head_dim

    @property
    def attention_qkv_bias(self) -> bool:
        """Whether the q, k and v projections carry a bias (`use_bias` or `qkv_bias`)."""
        return self.use_bias or self.qkv_bias

    @property
    def rope_scaling_params(self) -> dict | None:
        """The RoPE scaling in Hugging Face's `rope_scaling` format (None when unscaled)."""
        if self.rope_scaling == "none":
            return None
        if self.rope_scaling == "linear":
            return {"rope_type": "linear", "factor": float(self.rope_scaling_factor)}
        return {"rope_type": "llama3", "factor": float(self.rope_scaling_factor),
                "low_freq_factor": float(self.rope_low_freq_factor),
                "high_freq_factor": float(self.rope_high_freq_factor),
                "original_max_position_embeddings": self.rope_original_max_len}

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
            raise validate.InputError(f"ModelConfig.replace got unknown fields {sorted(unknown)}; accepted: "
                               f"{sorted(f.name for f in dataclasses.fields(self))}")
        if ("num_heads" in changes and "num_kv_heads" not in changes
                and self.num_kv_heads == self.num_heads):
            changes["num_kv_heads"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check_seq_len(self, seq_len: int) -> None:
        """Raises `InputError` (a `ValueError`) if a call would exceed `max_seq_len`."""
        if seq_len > self.max_seq_len:
            raise validate.InputError(
                f"sequence length {seq_len} exceeds ModelConfig.max_seq_len={self.max_seq_len}")

    # ------------------------------------------------------------------ seed format
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "ModelConfig") -> "ModelConfig":
        """Builds a config from a dict with this class's field names or the seed's keys.

        The seed's switches map onto fields: `use_enhanced` (True: RMSNorm, RoPE, flash attention;
        False: LayerNorm, learned positions, reference attention), then `use_rotary`,
        `use_rms_norm`, `use_flash_attn` override the part they name. `batch_size`, which the
        seed's benchmark adds to its config, is a property of the input, not of the model: it is
        accepted and ignored. A Hugging Face config (one with `model_type` or `architectures`)
        goes to `from_hf`, the one reader of that format. Hugging Face size keys without
        them (`hidden_size`, `num_hidden_layers`, ...) raise `ValueError`: the norm, MLP,
        positions and biases they leave out differ between families. Any other key raises too.
        """
        from vishwamai import config as keys   # the key tables and presets, read at call time
        if isinstance(d, ModelConfig):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a ModelConfig or a dict; got {type(d).__name__}")
        if "model_type" in d or "architectures" in d:
            return cls.from_hf(d)
        hf_keys = sorted(set(d) & set(keys.HF_SIZE_KEYS))
        if hf_keys:
            raise ValueError(
                f"config keys {hf_keys} are Hugging Face names: give the whole Hugging Face "
                "config (with its model_type) to ModelConfig.from_hf, or use this class's field "
                "names (hidden_dim, num_layers, num_heads, num_kv_heads, mlp_dim, max_seq_len)")
        d = dict(d)
        for k in keys._IGNORED_KEYS:
            d.pop(k, None)
        if "preset" in d:
            base = keys.get_preset(d.pop("preset")).to_dict()
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
            raise validate.InputError(
                f"unknown config keys {unknown}; accepted: {sorted(fields | set(keys.SEED_KEYS))}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"config is missing required keys {missing}")
        return cls(**d)

    # ------------------------------------------------------------------ Hugging Face format
    @classmethod
    def from_hf(cls, config, *, max_seq_len: int | None = None, **overrides) -> "ModelConfig":
        """Reads a Hugging Face `config.json` of the GPT-2, Llama, Mistral or Qwen2 family.

        Every architecture key is mapped (sizes, heads, kv heads, head_dim, norm eps, RoPE theta
        and scaling, tied head, activation, biases, learned positions). The sizes (vocab,
        width, depth, heads, MLP width) are required; other keys absent from the file take
        transformers' defaults for that family. Keys that do not change the
        computed function (token ids, dropout rates, `torch_dtype` beyond choosing the
        dtypes, bookkeeping) are ignored. Keys whose value would change it in a way this
        package does not implement raise `ValueError` naming them: sliding-window attention
        that can bite, RoPE types other than default/linear/llama3, partial rotary
        embeddings, GPT-2's attention-scaling variants, bias layouts other than none, all,
        or q/k/v only, and any other model_type or head (`architectures`).

        Args:
          config: a dict, a path to a `config.json` or to a directory holding one, or an object
            with `to_dict()` (a transformers `PretrainedConfig`).
          max_seq_len: use the model up to this length instead of `max_position_embeddings`
            (Mistral-7B-v0.1's 4096-token sliding window is exact full attention up to 4096).
          **overrides: `ModelConfig` fields to set afterwards (e.g. `attention_impl`, `dtype`).
        Returns:
          The `ModelConfig`; `dtype` and `param_dtype` are the file's `torch_dtype` (or `dtype`)
          when it is one of float32, bfloat16, float16, else float32.
        """
        from vishwamai import config as keys   # the Hugging Face key tables, read at call time
        d = keys._read_hf_config(config)
        fields = keys._hf_fields(d, max_seq_len)
        return cls(**fields).replace(**overrides) if overrides else cls(**fields)

    def to_hf(self, model_type: str | None = None) -> dict:
        """This config as a Hugging Face `config.json` dict (the reverse of `from_hf`).

        Args:
          model_type: 'gpt2', 'llama', 'mistral' or 'qwen2'; None picks the family the fields
            describe (learned positions + LayerNorm: gpt2; q/k/v-only biases: qwen2; else llama).
        Raises:
          ValueError naming the first field that the family cannot express.
        """
        from vishwamai import config as keys
        return keys._to_hf(self, model_type)
