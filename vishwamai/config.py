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

from vishwamai import validate

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
# The disjoint parameter components whose sum is the total (`analysis.count_params` computes
# them from the config, `VishwamAI.param_breakdown` reads them off the real tree).
PARAM_COMPONENTS = ("embedding", "positions", "attention_q", "attention_k", "attention_v",
                    "attention_o", "mlp", "norms", "head")
ROPE_SCALINGS = ("none", "linear", "llama3")
QK_NORMS = ("none", "head", "full")  # RMSNorm of q and k: per head over H (Qwen3), over N*H (OLMoE)
ROUTER_SCORINGS = ("softmax", "sigmoid")
MOE_IMPLS = ("dropless", "capacity", "dense")  # see vishwamai.kernels.moe  # see vishwamai.layers.rope.rope_inv_freq


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
        validate.one_of("ModelConfig.qk_norm", self.qk_norm, QK_NORMS)
        self._validate_moe()
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

    def _validate_moe(self) -> None:
        """The MoE fields: checked only as far as they matter (num_experts > 0)."""
        if isinstance(self.num_experts, bool) or not isinstance(self.num_experts, int) or \
                self.num_experts < 0:
            validate.fail("ModelConfig.num_experts", self.num_experts,
                          "an int >= 0 (0: dense MLP)")
        if not self.num_experts:
            return
        validate.positive_int("ModelConfig.num_experts_per_tok", self.num_experts_per_tok)
        if self.num_experts_per_tok > self.num_experts:
            raise validate.InputError(
                f"ModelConfig.num_experts_per_tok={self.num_experts_per_tok} (top-k) must not "
                f"exceed num_experts={self.num_experts}")
        for f in ("moe_mlp_dim", "shared_expert_dim"):
            if getattr(self, f) is not None:
                validate.positive_int(f"ModelConfig.{f}", getattr(self, f))
        for f in ("first_dense_layers", "num_shared_experts"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                validate.fail(f"ModelConfig.{f}", v, "an int >= 0")
        if self.first_dense_layers >= self.num_layers:
            raise validate.InputError(
                f"ModelConfig.first_dense_layers={self.first_dense_layers} must be below "
                f"num_layers={self.num_layers} (num_experts=0 is the dense model)")
        if self.first_dense_layers and self.scan_layers:
            raise validate.InputError(
                f"ModelConfig.first_dense_layers={self.first_dense_layers} needs scan_layers=False "
                "(a scan repeats one block; the dense and MoE blocks differ)")
        validate.one_of("ModelConfig.router_scoring", self.router_scoring, ROUTER_SCORINGS)
        validate.one_of("ModelConfig.moe_impl", self.moe_impl, MOE_IMPLS)
        for f in ("norm_topk_prob", "router_bias", "shared_expert_gate"):
            validate.boolean(f"ModelConfig.{f}", getattr(self, f))
        if isinstance(self.capacity_factor, bool) or not isinstance(
                self.capacity_factor, (int, float)) or not self.capacity_factor > 0:
            validate.fail("ModelConfig.capacity_factor", self.capacity_factor, "a number > 0")
        validate.positive("ModelConfig.routed_scaling_factor", self.routed_scaling_factor)
        for f in ("router_aux_loss_coef", "router_z_loss_coef"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                validate.fail(f"ModelConfig.{f}", v, "a number >= 0")
        validate.positive_int("ModelConfig.router_n_group", self.router_n_group)
        validate.positive_int("ModelConfig.router_topk_group", self.router_topk_group)
        if self.num_experts % self.router_n_group or \
                self.router_topk_group > self.router_n_group:
            raise validate.InputError(
                f"ModelConfig.router_n_group={self.router_n_group} must divide num_experts="
                f"{self.num_experts} and be >= router_topk_group={self.router_topk_group}")
        if self.router_n_group > 1 and self.num_experts_per_tok > (
                self.router_topk_group * self.num_experts // self.router_n_group):
            raise validate.InputError(
                f"ModelConfig.num_experts_per_tok={self.num_experts_per_tok} exceeds the experts "
                f"in router_topk_group={self.router_topk_group} groups")

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
        if isinstance(d, ModelConfig):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"config must be a ModelConfig or a dict; got {type(d).__name__}")
        if "model_type" in d or "architectures" in d:
            return cls.from_hf(d)
        hf_keys = sorted(set(d) & set(HF_SIZE_KEYS))
        if hf_keys:
            raise ValueError(
                f"config keys {hf_keys} are Hugging Face names: give the whole Hugging Face "
                "config (with its model_type) to ModelConfig.from_hf, or use this class's field "
                "names (hidden_dim, num_layers, num_heads, num_kv_heads, mlp_dim, max_seq_len)")
        d = dict(d)
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
            raise validate.InputError(
                f"unknown config keys {unknown}; accepted: {sorted(fields | set(SEED_KEYS))}")
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
        d = _read_hf_config(config)
        fields = _hf_fields(d, max_seq_len)
        return cls(**fields).replace(**overrides) if overrides else cls(**fields)

    def to_hf(self, model_type: str | None = None) -> dict:
        """This config as a Hugging Face `config.json` dict (the reverse of `from_hf`).

        Args:
          model_type: 'gpt2', 'llama', 'mistral' or 'qwen2'; None picks the family the fields
            describe (learned positions + LayerNorm: gpt2; q/k/v-only biases: qwen2; else llama).
        Raises:
          ValueError naming the first field that the family cannot express.
        """
        return _to_hf(self, model_type)


SEED_KEYS = ("vocab_size", "num_layers", "num_heads", "head_dim", "hidden_dim", "mlp_dim",
             "max_seq_len", "dropout_rate", "use_enhanced", "use_rotary", "use_flash_attn",
             "use_rms_norm", "dtype")
# Hugging Face size keys: in a dict without model_type they are an error, not an alias.
HF_SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "max_position_embeddings", "n_embd", "n_layer", "n_head",
                "n_positions", "n_inner")
_IGNORED_KEYS = ("batch_size",)

# ---------------------------------------------------------------------- Hugging Face configs
MOE_HF_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
HF_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2") + MOE_HF_MODEL_TYPES
HF_ARCHITECTURES = {
    "MixtralForCausalLM": "mixtral", "MixtralModel": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen2MoeModel": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe", "Qwen3MoeModel": "qwen3_moe",
    "OlmoeForCausalLM": "olmoe", "OlmoeModel": "olmoe",
    "GPT2LMHeadModel": "gpt2", "GPT2Model": "gpt2",
    "LlamaForCausalLM": "llama", "LlamaModel": "llama",
    "MistralForCausalLM": "mistral", "MistralModel": "mistral",
    "Qwen2ForCausalLM": "qwen2", "Qwen2Model": "qwen2",
}
_CAUSAL_LM = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
              "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
              "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}
# transformers' defaults for keys a config.json may leave out.
_HF_DEFAULTS = {
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
             "tie_word_embeddings": True},
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
              "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": False, "sliding_window": 4096},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None,
              "max_window_layers": 28},
    # transformers 5.x config classes' defaults (MixtralConfig(), Qwen2MoeConfig(), ...)
    "mixtral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False, "sliding_window": None, "num_local_experts": 8,
                "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001},
    "qwen2_moe": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
                  "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
                  "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                  "tie_word_embeddings": False, "use_sliding_window": False,
                  "sliding_window": None, "max_window_layers": 28, "qkv_bias": True,
                  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                  "num_experts": 60, "num_experts_per_tok": 4, "norm_topk_prob": False,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001},
    "qwen3_moe": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
                  "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 4,
                  "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                  "tie_word_embeddings": False, "use_sliding_window": False,
                  "sliding_window": None, "attention_bias": False, "moe_intermediate_size": 768,
                  "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": False,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": 0.001},
    "olmoe": {"vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 2048,
              "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": None,
              "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "attention_bias": False, "clip_qkv": None,
              "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": False,
              "router_aux_loss_coef": 0.01},
}
# GPT-2's activation_function -> mlp_activation; a gated family's hidden_act -> mlp_activation.
_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                     "relu": "relu"}
_GATED_ACTIVATIONS = {"silu": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu"}


def _read_hf_config(config) -> dict:
    import json
    import os

    if hasattr(config, "to_dict") and not isinstance(config, Mapping):
        config = config.to_dict()
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"no Hugging Face config.json at config={os.fspath(config)!r}")
        with open(path) as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        raise ValueError("config must be a dict, a path to config.json (or its directory), or a "
                         f"PretrainedConfig; got {type(config).__name__}")
    return dict(config)


def _hf_int(d, key) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"Hugging Face config key {key!r} must be a positive int; got {v!r}")
    return v


def _hf_model_type(d) -> str:
    model_type = d.get("model_type")
    archs = d.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    if model_type is None and archs:
        model_type = HF_ARCHITECTURES.get(archs[0])
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"Hugging Face model_type={d.get('model_type')!r} (architectures="
                         f"{list(archs)}) is not supported; accepted model_type: {HF_MODEL_TYPES}")
    bad = [a for a in archs if HF_ARCHITECTURES.get(a) != model_type]
    if bad:
        accepted = sorted(a for a, t in HF_ARCHITECTURES.items() if t == model_type)
        raise ValueError(f"Hugging Face architectures={bad} is not supported for "
                         f"model_type={model_type!r}; accepted: {accepted}")
    return model_type


def _hf_refuse(key, value, why):
    raise ValueError(f"Hugging Face config key {key}={value!r} is not supported: {why}")


def _hf_rope(d) -> dict:
    """RoPE theta and scaling fields from either `rope_theta` + `rope_scaling` (transformers 4)
    or `rope_parameters` (transformers 5)."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        _hf_refuse("rope_scaling", params, "expected a dict or null")
    if params and all(isinstance(v, Mapping) for v in params.values()):
        _hf_refuse("rope_parameters", params, "one RoPE per layer type is not implemented")
    theta = params.get("rope_theta", d.get("rope_theta", 10_000.0))
    partial = params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        _hf_refuse("partial_rotary_factor", partial, "RoPE is applied to the whole head")
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    out = {"rope_theta": float(theta)}
    if kind == "default":
        return out
    if kind not in ("linear", "llama3"):
        _hf_refuse("rope_type", kind, "accepted: ('default', 'linear', 'llama3')")
    out.update(rope_scaling=kind, rope_scaling_factor=float(params["factor"]))
    if kind == "llama3":
        original = params.get("original_max_position_embeddings",
                              d.get("original_max_position_embeddings",
                                    d.get("max_position_embeddings")))
        out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_original_max_len=int(original))
    return out


def _hf_window(window, max_len):
    """Refuses sliding-window attention unless the window covers every usable position."""
    if window is None or window >= max_len:
        return
    _hf_refuse("sliding_window", window,
               f"sliding-window attention is not implemented and the window is shorter than "
               f"max_seq_len={max_len}; pass max_seq_len <= {window} to from_hf to use the model "
               f"within its window, where full causal attention computes the same function")


_HF_REQUIRED = {
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head"),
    "llama": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size"),
}


def _hf_fields(d, max_seq_len=None) -> dict:
    model_type = _hf_model_type(d)
    required = _HF_REQUIRED["gpt2" if model_type == "gpt2" else "llama"]
    missing = [k for k in required if d.get(k) is None]
    if missing:
        raise ValueError(f"Hugging Face {model_type} config is missing required keys {missing}")
    d = {**_HF_DEFAULTS[model_type], **{k: v for k, v in d.items() if v is not None
                                        or k in ("n_inner", "num_key_value_heads",
                                                 "sliding_window", "head_dim")}}
    dtype = d.get("dtype") or d.get("torch_dtype")
    dtype = dtype if dtype in DTYPES else "float32"
    out = {"dtype": dtype, "param_dtype": dtype, "dropout_rate": 0.0, "name": model_type,
           "tie_embeddings": d["tie_word_embeddings"]}
    if not isinstance(out["tie_embeddings"], bool):
        raise ValueError("Hugging Face config key 'tie_word_embeddings' must be a bool; got "
                         f"{out['tie_embeddings']!r}")
    if model_type == "gpt2":
        D, N = _hf_int(d, "n_embd"), _hf_int(d, "n_head")
        if D % N:
            raise ValueError(f"Hugging Face config n_embd={D} is not divisible by n_head={N}")
        act = d["activation_function"]
        if act not in _GPT2_ACTIVATIONS:
            _hf_refuse("activation_function", act, f"accepted: {tuple(_GPT2_ACTIVATIONS)}")
        for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
            if d.get(key, ok) != ok:
                _hf_refuse(key, d[key], f"only {key}={ok} is implemented")
        length = _hf_int(d, "n_positions")
        out.update(vocab_size=_hf_int(d, "vocab_size"), num_layers=_hf_int(d, "n_layer"),
                   num_heads=N, num_kv_heads=N, head_dim=D // N, hidden_dim=D,
                   mlp_dim=d["n_inner"] if d["n_inner"] is not None else 4 * D,
                   max_seq_len=length, mlp_activation=_GPT2_ACTIVATIONS[act], norm="layernorm",
                   norm_eps=float(d["layer_norm_epsilon"]), position="learned", use_bias=True)
        if max_seq_len is not None and max_seq_len != length:
            _hf_refuse("n_positions", length, f"the learned position table fixes max_seq_len; "
                       f"got max_seq_len={max_seq_len!r}")
        return out

    D, N = _hf_int(d, "hidden_size"), _hf_int(d, "num_attention_heads")
    L = _hf_int(d, "num_hidden_layers")
    K = d["num_key_value_heads"] if d["num_key_value_heads"] is not None else N
    H = d.get("head_dim") or D // N  # transformers: `getattr(config, "head_dim", None) or D // N`
    act = d["hidden_act"]
    if act not in _GATED_ACTIVATIONS:
        _hf_refuse("hidden_act", act, f"accepted: {tuple(_GATED_ACTIVATIONS)}")
    length = _hf_int(d, "max_position_embeddings")
    if max_seq_len is not None:
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be a positive int or None; got {max_seq_len!r}")
        length = max_seq_len
    use_bias, qkv_bias = False, model_type == "qwen2" or (model_type == "qwen2_moe"
                                                          and bool(d["qkv_bias"]))
    if model_type == "llama":
        attn_bias, mlp_bias = d["attention_bias"], d["mlp_bias"]
        if attn_bias != mlp_bias:
            _hf_refuse("attention_bias", attn_bias,
                       f"with mlp_bias={mlp_bias!r}: biases go on all projections or on none")
        use_bias = bool(attn_bias)
    elif d.get("attention_bias") or d.get("mlp_bias"):
        key = "attention_bias" if d.get("attention_bias") else "mlp_bias"
        _hf_refuse(key, d[key], f"{model_type} has no such biases")
    layer_types = d.get("layer_types") or []
    if model_type in ("mistral", "mixtral"):
        _hf_window(d["sliding_window"], length)
    elif model_type == "qwen3_moe" and d["use_sliding_window"]:
        _hf_window(d["sliding_window"], length)
    elif model_type in ("qwen2", "qwen2_moe"):
        sliding = any(t != "full_attention" for t in layer_types) or (
            d["use_sliding_window"] and d["max_window_layers"] < L)
        if sliding:
            _hf_window(d["sliding_window"], length)
    elif any(t != "full_attention" for t in layer_types):
        _hf_refuse("layer_types", layer_types, "only full_attention layers are implemented")
    out.update(vocab_size=_hf_int(d, "vocab_size"), num_layers=L, num_heads=N, num_kv_heads=K,
               head_dim=H, hidden_dim=D, mlp_dim=_hf_int(d, "intermediate_size"),
               max_seq_len=length, mlp_activation=_GATED_ACTIVATIONS[act], norm="rmsnorm",
               norm_eps=float(d["rms_norm_eps"]), position="rope", use_bias=use_bias,
               qkv_bias=qkv_bias, **_hf_rope(d), **_hf_moe_fields(d, model_type))
    return out


def _hf_moe_fields(d, model_type) -> dict:
    """The MoE (and q/k-norm) fields of a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE config."""
    if model_type not in MOE_HF_MODEL_TYPES:
        return {}
    # transformers 5.x writes `num_local_experts` for every family; older files `num_experts`
    E = _hf_int(d, "num_local_experts" if d.get("num_local_experts") is not None
                else "num_experts")
    out = {"num_experts": E, "num_experts_per_tok": _hf_int(d, "num_experts_per_tok"),
           "router_aux_loss_coef": float(d.get("router_aux_loss_coef") or 0.0),
           "norm_topk_prob": True if model_type == "mixtral" else bool(d["norm_topk_prob"])}
    if model_type in ("qwen2_moe", "qwen3_moe"):
        if d.get("decoder_sparse_step", 1) != 1:
            _hf_refuse("decoder_sparse_step", d["decoder_sparse_step"], "every block is MoE here")
        if d.get("mlp_only_layers"):
            _hf_refuse("mlp_only_layers", d["mlp_only_layers"], "every block is MoE here")
        out["moe_mlp_dim"] = _hf_int(d, "moe_intermediate_size")
    if model_type == "qwen2_moe" and d.get("shared_expert_intermediate_size"):
        out.update(num_shared_experts=1, shared_expert_gate=True,
                   shared_expert_dim=_hf_int(d, "shared_expert_intermediate_size"))
    if model_type == "qwen3_moe":
        out["qk_norm"] = "head"
    if model_type == "olmoe":
        if d.get("clip_qkv") is not None:
            _hf_refuse("clip_qkv", d["clip_qkv"], "clipping q/k/v is not implemented")
        out["qk_norm"] = "full"
    return out


def _to_hf_moe(cfg: "ModelConfig", model_type: str, need) -> dict:
    """The MoE keys of `_to_hf`; `need(field, ok, accepted)` raises for what the family lacks."""
    moe = model_type in MOE_HF_MODEL_TYPES
    need("num_experts", bool(cfg.num_experts) == moe, "> 0" if moe else "0 (a dense family)")
    need("qk_norm", cfg.qk_norm == {"qwen3_moe": "head", "olmoe": "full"}.get(model_type, "none"),
         {"qwen3_moe": "'head'", "olmoe": "'full'"}.get(model_type, "'none'"))
    if not moe:
        return {}
    need("first_dense_layers", cfg.first_dense_layers == 0, "0")
    need("router_scoring", cfg.router_scoring == "softmax", "'softmax'")
    need("router_bias", not cfg.router_bias, "False")
    need("router_n_group", cfg.router_n_group == 1, "1")
    need("routed_scaling_factor", cfg.routed_scaling_factor == 1.0, "1.0")
    need("use_bias", not cfg.use_bias, "False")
    need("qkv_bias", cfg.qkv_bias == (model_type == "qwen2_moe"), str(model_type == "qwen2_moe"))
    shared = model_type == "qwen2_moe"
    need("num_shared_experts", cfg.num_shared_experts == int(shared), str(int(shared)))
    need("shared_expert_gate", cfg.shared_expert_gate == shared, str(shared))
    out = {"num_experts_per_tok": cfg.num_experts_per_tok,
           "router_aux_loss_coef": cfg.router_aux_loss_coef}
    if model_type in ("mixtral", "olmoe"):
        need("moe_mlp_dim", cfg.expert_mlp_dim == cfg.mlp_dim, f"None or mlp_dim={cfg.mlp_dim}")
    else:
        out.update(moe_intermediate_size=cfg.expert_mlp_dim, decoder_sparse_step=1,
                   mlp_only_layers=[], use_sliding_window=False, sliding_window=None)
    if model_type == "mixtral":
        need("norm_topk_prob", cfg.norm_topk_prob, "True")
        out.update(num_local_experts=cfg.num_experts, sliding_window=None, router_jitter_noise=0.0)
        return out
    out.update(num_experts=cfg.num_experts, norm_topk_prob=cfg.norm_topk_prob)
    if model_type == "qwen2_moe":
        out.update(qkv_bias=True, max_window_layers=cfg.num_layers,
                   shared_expert_intermediate_size=cfg.shared_expert_dim
                   or cfg.expert_mlp_dim)
    else:
        out.update(attention_bias=False)
        if model_type == "olmoe":
            out["clip_qkv"] = None
    return out


def _to_hf(cfg: "ModelConfig", model_type: str | None) -> dict:
    if model_type is None:
        if cfg.num_experts:
            model_type = {"head": "qwen3_moe", "full": "olmoe"}.get(
                cfg.qk_norm, "qwen2_moe" if cfg.num_shared_experts else "mixtral")
        elif cfg.position == "learned" or cfg.norm == "layernorm":
            model_type = "gpt2"
        elif cfg.qkv_bias and not cfg.use_bias:
            model_type = "qwen2"
        else:
            model_type = "llama"
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not one of {HF_MODEL_TYPES}")

    def need(field, ok, accepted):
        if not ok:
            raise ValueError(f"ModelConfig.{field}={getattr(cfg, field)!r} cannot be written as "
                             f"a Hugging Face {model_type} config; it needs {accepted}")

    out = {"architectures": [_CAUSAL_LM[model_type]], "model_type": model_type,
           "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
           "torch_dtype": cfg.param_dtype}
    if model_type == "gpt2":
        act = {v: k for k, v in _GPT2_ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}
        need("position", cfg.position == "learned", "'learned'")
        need("norm", cfg.norm == "layernorm", "'layernorm'")
        need("use_bias", cfg.use_bias, "True")
        need("mlp_activation", cfg.mlp_activation in act, f"one of {tuple(act)}")
        need("num_kv_heads", cfg.num_kv_heads == cfg.num_heads, f"= num_heads={cfg.num_heads}")
        need("head_dim", cfg.q_dim == cfg.hidden_dim, f"num_heads * head_dim = hidden_dim")
        need("rope_scaling", cfg.rope_scaling == "none", "'none'")
        out.update(n_embd=cfg.hidden_dim, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                   n_inner=cfg.mlp_dim, n_positions=cfg.max_seq_len, n_ctx=cfg.max_seq_len,
                   activation_function=act[cfg.mlp_activation],
                   layer_norm_epsilon=cfg.norm_eps, scale_attn_weights=True,
                   scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
        return out
    hidden_act = {v: k for k, v in _GATED_ACTIVATIONS.items() if k != "gelu_new"}
    moe = _to_hf_moe(cfg, model_type, need)
    need("position", cfg.position == "rope", "'rope'")
    need("norm", cfg.norm == "rmsnorm", "'rmsnorm'")
    need("mlp_activation", cfg.mlp_activation in hidden_act, f"one of {tuple(hidden_act)}")
    if model_type == "qwen2":
        need("use_bias", not cfg.use_bias, "False (q/k/v biases only)")
        need("qkv_bias", cfg.qkv_bias, "True")
    elif model_type in MOE_HF_MODEL_TYPES:
        pass
    else:
        need("qkv_bias", not cfg.qkv_bias or cfg.use_bias, "False (or use_bias=True)")
    if model_type == "mistral":
        need("use_bias", not cfg.use_bias, "False")
    out.update(hidden_size=cfg.hidden_dim, intermediate_size=cfg.mlp_dim,
               num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
               num_key_value_heads=cfg.num_kv_heads, hidden_act=hidden_act[cfg.mlp_activation],
               max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
               rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling_params,
               head_dim=cfg.head_dim)
    if model_type == "llama":
        out.update(attention_bias=cfg.use_bias, mlp_bias=cfg.use_bias)
    elif model_type == "mistral":
        out["sliding_window"] = None
    elif model_type == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None,
                   max_window_layers=cfg.num_layers)
    if model_type in ("mixtral", "olmoe"):
        out["intermediate_size"] = cfg.expert_mlp_dim
    out.update(moe)
    return out


def _seed(name, **dims) -> ModelConfig:
    """The seed's presets: its dimensions, the architecture its parameter formula describes
    (pre-norm, 2-matrix GELU MLP, tied embedding, no biases), and its enhanced switches."""
    return ModelConfig(vocab_size=32000, max_seq_len=2048, mlp_activation="gelu",
                       norm="rmsnorm", position="rope", tie_embeddings=True, use_bias=False,
                       dropout_rate=0.1, dtype="bfloat16", attention_impl="flash",
                       name=name, **dims)


def _llama(name, **dims) -> ModelConfig:
    dims.setdefault("norm_eps", 1e-5)
    return ModelConfig(mlp_activation="swiglu", norm="rmsnorm", position="rope",
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
    # Mixture of experts on a laptop CPU: 8 experts, top-2, the auxiliary losses on.
    "tiny_moe": ModelConfig(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=16, hidden_dim=64, mlp_dim=64, max_seq_len=256,
                            mlp_activation="swiglu", norm="rmsnorm", position="rope",
                            tie_embeddings=False, num_experts=8, num_experts_per_tok=2,
                            router_aux_loss_coef=0.01,
                            router_z_loss_coef=0.001, name="tiny_moe"),
    # Mixtral-8x7B (Jiang et al. 2024; HF `mistralai/Mixtral-8x7B-v0.1`): 46,702,792,704.
    "mixtral_8x7b": _llama("mixtral_8x7b", vocab_size=32000, num_layers=32, num_heads=32,
                           num_kv_heads=8, head_dim=128, hidden_dim=4096, mlp_dim=14336,
                           max_seq_len=32768, rope_theta=1e6, num_experts=8,
                           num_experts_per_tok=2, router_aux_loss_coef=0.02),
    # Qwen3-30B-A3B (Qwen team 2025; HF `Qwen/Qwen3-30B-A3B`): 30,532,122,624.
    "qwen3_30b_a3b": _llama("qwen3_30b_a3b", vocab_size=151936, num_layers=48, num_heads=32,
                            num_kv_heads=4, head_dim=128, hidden_dim=2048, mlp_dim=6144,
                            max_seq_len=40960, rope_theta=1e6, norm_eps=1e-6, qk_norm="head",
                            num_experts=128, num_experts_per_tok=8, moe_mlp_dim=768,
                            router_aux_loss_coef=0.001),
    # OLMoE-1B-7B (Muennighoff et al. 2024; HF `allenai/OLMoE-1B-7B-0924`): 6,919,161,856.
    "olmoe_1b_7b": _llama("olmoe_1b_7b", vocab_size=50304, num_layers=16, num_heads=16,
                          head_dim=128, hidden_dim=2048, mlp_dim=1024, max_seq_len=4096,
                          qk_norm="full", num_experts=64, num_experts_per_tok=8,
                          norm_topk_prob=False, router_aux_loss_coef=0.01,
                          router_z_loss_coef=0.001),
}

# Parameter counts as published (model cards / the papers' reference implementations).
PUBLISHED_PARAMS = {
    "mixtral_8x7b": 46_702_792_704,
    "qwen3_30b_a3b": 30_532_122_624,
    "olmoe_1b_7b": 6_919_161_856,
    "gpt2": 124_439_808,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "tinyllama_1_1b": 1_100_048_384,
}

SEED_PRESETS = ("base", "large", "xl", "xxl")

# Public Hugging Face config.json files shipped in vishwamai/data/hf_configs, and the parameter
# counts their model cards publish (the safetensors index totals: bytes / 2 for bf16 and fp16).
HF_CONFIG_PARAMS = {
    "gpt2": 124_439_808,
    "llama2_7b": 6_738_415_616,
    "llama3_1_8b": 8_030_261_248,
    "mistral_7b_v0_1": 7_241_732_096,
    "qwen2_5_7b": 7_615_616_512,
    "tinyllama_1_1b": 1_100_048_384,
    "mixtral_8x7b": 46_702_792_704,
    "qwen3_30b_a3b": 30_532_122_624,
    "olmoe_1b_7b_0924": 6_919_161_856,
    "qwen1_5_moe_a2_7b": 14_315_784_192,
}


def hf_config(name: str) -> dict:
    """The shipped Hugging Face `config.json` called `name` (see `HF_CONFIG_PARAMS`), as a dict."""
    import json
    from importlib import resources

    if name not in HF_CONFIG_PARAMS:
        raise ValueError(f"unknown shipped Hugging Face config {name!r}; accepted: "
                         f"{sorted(HF_CONFIG_PARAMS)}")
    path = resources.files("vishwamai").joinpath("data", "hf_configs", f"{name}.json")
    return json.loads(path.read_text())


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; `ValueError` listing the names otherwise."""
    if name not in PRESETS:
        raise validate.InputError(f"preset={name!r} is not accepted: expected one of {sorted(PRESETS)}")
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
    raise validate.InputTypeError(f"config must be a ModelConfig, a preset name or a dict; got "
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
