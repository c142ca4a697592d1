"""One memory budget for everything large the executor keeps on a GPU: weights, the paged KV pool, decode
CUDA graphs (activations of the largest bucket and one shared fp32 logits buffer), prefill activations,
the prefill logits and a fixed workspace (CUDA context, cuBLAS, allocator slack).

    plan = plan_memory(load_config("llama3-8b"), capacity_bytes=H200_BYTES)    # KV pool sized from the rest
    plan.fits, plan.headroom_bytes, plan.rows                                    # what each part takes

The runner sizes its KV pool with `kv_blocks_within` (from free memory) and the preflight checks the plans
of an H200 and an H100 with `plan_memory`; both use the same terms, so no buffer is left out of either.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from executor.config import has_qkv_bias, head_dim

GIB = 2**30
H200_BYTES = 143771 * 2**20  # nvidia-smi on the H200 machines (KINDS.md)
H100_BYTES = 81559 * 2**20  # H100 SXM 80 GB
WORKSPACE_BYTES = 2 * GIB  # CUDA context, cuBLAS workspaces, Triton launch metadata, allocator rounding
MAX_PREFILL_TOKENS = 16384  # longest prefill launch the activations are budgeted for
KV_SHARE = 0.9  # of what is left after everything else: the rest is headroom for fragmentation


def layer_params(config: PretrainedConfig) -> int:
    """Weights of one decoder layer's GEMMs (q, k, v, o, gate, up, down)."""
    h, d = config.hidden_size, head_dim(config)
    attn = h * (config.num_attention_heads + 2 * config.num_key_value_heads) * d + config.num_attention_heads * d * h
    return attn + 3 * h * config.intermediate_size


def num_params(config: PretrainedConfig, num_layers: int | None = None) -> int:
    """Every weight of the first `num_layers` layers, embeddings, final norm and LM head (tied: counted once)."""
    h, d, layers = config.hidden_size, head_dim(config), num_layers or config.num_hidden_layers
    bias = (config.num_attention_heads + 2 * config.num_key_value_heads) * d if has_qkv_bias(config) else 0
    per_layer = layer_params(config) + 2 * h + bias
    heads = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return layers * per_layer + heads + h


def kv_bytes_per_block(config: PretrainedConfig, block_size: int, elem_bytes: int, num_layers: int | None = None) -> int:
    """K and V of one block over all layers (as KVPool.bytes_per_block)."""
    layers = num_layers or config.num_hidden_layers
    return 2 * layers * block_size * config.num_key_value_heads * head_dim(config) * elem_bytes


def prefill_activation_bytes(config: PretrainedConfig, num_tokens: int, elem_bytes: int) -> int:
    """Peak activations of one layer of a prefill of `num_tokens`: gate|up and SiLU out (3 x I), residual,
    hidden, qkv, attention out and norm (8 x hidden), twice over for the allocator's overlap."""
    return 2 * num_tokens * (3 * config.intermediate_size + 8 * config.hidden_size) * elem_bytes


def decode_graph_bytes(config: PretrainedConfig, max_batch: int, elem_bytes: int, max_splits: int = 32) -> int:
    """Graphs of every (partition, bucket) share one pool: the largest bucket's activations, its bf16 logits
    before the copy, split-KV partials, plus the one fp32 logits buffer every graph writes into."""
    act = prefill_activation_bytes(config, max_batch, elem_bytes)
    partials = max_batch * config.num_attention_heads * max_splits * (head_dim(config) + 1) * 4
    return act + partials + max_batch * config.vocab_size * (elem_bytes + 4)


@dataclass(frozen=True)
class MemoryPlan:
    capacity_bytes: int
    rows: dict[str, int]  # part -> bytes, every large buffer
    kv_blocks: int

    @property
    def total_bytes(self) -> int:
        return sum(self.rows.values())

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.total_bytes

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0 and self.kv_blocks > 0

    def as_dict(self) -> dict:
        return {"capacity_gib": self.capacity_bytes / GIB, "kv_blocks": self.kv_blocks, "fits": self.fits,
                "headroom_gib": self.headroom_bytes / GIB, "total_gib": self.total_bytes / GIB,
                **{f"{k}_gib": v / GIB for k, v in self.rows.items()}}


def fixed_rows(config: PretrainedConfig, num_layers: int | None = None, elem_bytes: int = 2, max_batch: int = 256,
               max_prefill_tokens: int = MAX_PREFILL_TOKENS, include_weights: bool = True) -> dict[str, int]:
    """Everything but the KV pool. `include_weights=False` when the weights are already allocated."""
    rows = {"weights": num_params(config, num_layers) * elem_bytes if include_weights else 0,
            "decode_graphs": decode_graph_bytes(config, max_batch, elem_bytes),
            "prefill_activations": prefill_activation_bytes(config, max_prefill_tokens, elem_bytes),
            "prefill_logits": max_batch * config.vocab_size * (elem_bytes + 4),
            "workspace": WORKSPACE_BYTES}
    return rows


def kv_blocks_within(free_bytes: int, config: PretrainedConfig, block_size: int, elem_bytes: int,
                     num_layers: int | None = None, fixed_bytes: int = 0) -> int:
    """KV blocks that fit in KV_SHARE of what `free_bytes` leaves after `fixed_bytes` (0 when none fit)."""
    per_block = kv_bytes_per_block(config, block_size, elem_bytes, num_layers)
    return max(0, int(KV_SHARE * (free_bytes - fixed_bytes) // per_block))


def plan_memory(config: PretrainedConfig, capacity_bytes: int, num_layers: int | None = None, block_size: int = 16,
                elem_bytes: int = 2, max_batch: int = 256, max_prefill_tokens: int = MAX_PREFILL_TOKENS,
                kv_blocks: int | None = None) -> MemoryPlan:
    """The plan of a fresh card: fixed parts, then the KV pool in what is left (or `kv_blocks` if given)."""
    rows = fixed_rows(config, num_layers, elem_bytes, max_batch, max_prefill_tokens)
    if kv_blocks is None:
        kv_blocks = kv_blocks_within(capacity_bytes, config, block_size, elem_bytes, num_layers, sum(rows.values()))
    rows["kv_pool"] = (kv_blocks + 1) * kv_bytes_per_block(config, block_size, elem_bytes, num_layers)  # + scratch
    return MemoryPlan(capacity_bytes, rows, kv_blocks)
