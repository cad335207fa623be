"""`VishwamAI`: the model behind one object: init, logits, loss, generation, checkpoints."""
from vishwamai.model.sampling import (  # noqa: F401
    _cache_fill, _check_mask, _check_sampling, _check_token_id, _mask_positions, cross_entropy,
    sample_logits, target_masks)
from vishwamai.model.weights import (  # noqa: F401
    _ATTENTION_PARTS, _component, fp8_weight_bytes, matmul_weight_shapes, weight_bytes)
from vishwamai.model.core import VishwamAI  # noqa: F401
