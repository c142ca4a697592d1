"""A Llama/Qwen2-family decoder (GQA, RoPE incl. llama3 scaling, RMSNorm, SiLU MLP) built for layer groups.

    model = build_model("tiny", device="cpu", dtype=torch.float32)          # random weights, seeded
    model = build_model("llama3-8b", "cuda", torch.bfloat16, weights=dir)   # local safetensors, HF names
    hidden = model.embed(token_ids)                                         # [T, hidden]
    hidden = model.run_layers(hidden, 0, 8, attn_metadata, kv_pool)         # one layer group
    logits = model.logits(hidden[attn_metadata.last_rows()])                # [S, vocab] fp32

torch does the GEMMs; attention, RMSNorm, RoPE and SiLU-mul come from `triton_kernels` when `use_triton`
(default on CUDA) or from `torch_reference`. q/k/v and gate/up projections are merged into one GEMM each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from executor import torch_reference
from executor.attn_metadata import AttnMetadata
from executor.config import has_qkv_bias, head_dim, load_config, rope_parameters
from executor.kv_pool import KVPool


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(Hq + 2 Hk) * D, hidden]
    qkv_bias: torch.Tensor | None  # [(Hq + 2 Hk) * D]
    o_proj: torch.Tensor  # [hidden, Hq * D]
    o_bias: torch.Tensor | None  # [hidden]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 * I, hidden]
    down: torch.Tensor  # [hidden, I]


def rope_inv_freq(config: PretrainedConfig) -> torch.Tensor:
    """[D / 2] fp32 inverse frequencies for rope types default, linear and llama3 (as transformers computes them)."""
    params, dim = rope_parameters(config), head_dim(config)
    inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = params["rope_type"]
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / params["factor"]
    if kind != "llama3":
        raise NotImplementedError(f"rope_type {kind!r}")
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(is_medium, smoothed, scaled)


class DecoderModel:
    def __init__(self, config: PretrainedConfig, device: torch.device | str, dtype: torch.dtype,
                 use_triton: bool | None = None) -> None:
        if getattr(config, "mlp_bias", False):
            raise NotImplementedError("mlp_bias")
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_layers = config.num_hidden_layers
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = head_dim(config)
        self.scale = self.head_dim ** -0.5
        self.use_triton = self.device.type == "cuda" if use_triton is None else use_triton
        self.embed_tokens = torch.empty(0)  # [vocab, hidden]
        self.final_norm = torch.empty(0)  # [hidden]
        self.lm_head = torch.empty(0)  # [vocab, hidden]; the embedding itself when tied
        self.layers: list[LayerWeights] = []
        self._cos_sin: torch.Tensor | None = None

    @property
    def ops(self):  # the kernel module: same functions, two implementations
        if self.use_triton:
            from executor import triton_kernels  # imported late: tests set TRITON_INTERPRET first
            return triton_kernels
        return torch_reference

    @property
    def cos_sin(self) -> torch.Tensor:
        """[max_position, D] fp32: cos in the first half, sin in the second (built on first use)."""
        if self._cos_sin is None:
            pos = torch.arange(self.config.max_position_embeddings, dtype=torch.float32)
            freqs = torch.outer(pos, rope_inv_freq(self.config))
            self._cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(self.device)
        return self._cos_sin

    # ---- weights -----------------------------------------------------------------------------------
    def init_random(self, seed: int = 0) -> "DecoderModel":
        """Normal(0, initializer_range) matrices, unit norms, zero biases; same seed -> same weights."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        std = getattr(self.config, "initializer_range", 0.02)
        c, d = self.config, self.head_dim

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype) * std

        def ones(n: int) -> torch.Tensor:
            return torch.ones(n, device=self.device, dtype=self.dtype)

        def zeros(n: int) -> torch.Tensor:
            return torch.zeros(n, device=self.device, dtype=self.dtype)

        qkv_rows = (self.num_heads + 2 * self.num_kv_heads) * d
        self.embed_tokens = randn(c.vocab_size, c.hidden_size)
        self.final_norm = ones(c.hidden_size)
        self.lm_head = self.embed_tokens if c.tie_word_embeddings else randn(c.vocab_size, c.hidden_size)
        bias = has_qkv_bias(c)
        self.layers = [LayerWeights(
            input_norm=ones(c.hidden_size), qkv=randn(qkv_rows, c.hidden_size),
            qkv_bias=zeros(qkv_rows) if bias else None,
            o_proj=randn(c.hidden_size, self.num_heads * d),
            o_bias=zeros(c.hidden_size) if self._has_o_bias() else None,
            post_norm=ones(c.hidden_size), gate_up=randn(2 * c.intermediate_size, c.hidden_size),
            down=randn(c.hidden_size, c.intermediate_size)) for _ in range(self.num_layers)]
        return self

    def _has_o_bias(self) -> bool:
        return self.config.model_type == "llama" and bool(getattr(self.config, "attention_bias", False))

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> "DecoderModel":
        """Take weights under the standard HF names (model.layers.N.self_attn.q_proj.weight, ...)."""
        def get(name: str) -> torch.Tensor:
            return state[name].to(device=self.device, dtype=self.dtype)

        def cat(*names: str) -> torch.Tensor:
            return torch.cat([get(n) for n in names])

        self.embed_tokens = get("model.embed_tokens.weight")
        self.final_norm = get("model.norm.weight")
        tied = self.config.tie_word_embeddings or "lm_head.weight" not in state
        self.lm_head = self.embed_tokens if tied else get("lm_head.weight")
        self.layers = []
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            attn = [p + f"self_attn.{x}_proj" for x in "qkv"]
            self.layers.append(LayerWeights(
                input_norm=get(p + "input_layernorm.weight"), qkv=cat(*(a + ".weight" for a in attn)),
                qkv_bias=cat(*(a + ".bias" for a in attn)) if has_qkv_bias(self.config) else None,
                o_proj=get(p + "self_attn.o_proj.weight"),
                o_bias=get(p + "self_attn.o_proj.bias") if self._has_o_bias() else None,
                post_norm=get(p + "post_attention_layernorm.weight"),
                gate_up=cat(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                down=get(p + "mlp.down_proj.weight")))
        return self

    def load_weights(self, path: str | Path) -> "DecoderModel":
        """Load a local safetensors checkpoint (one file, or a folder of shards); never downloads."""
        from safetensors import safe_open

        path = Path(path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no .safetensors files at {path}")
        handles = [safe_open(str(f), framework="pt", device="cpu") for f in files]
        return self.load_state_dict(_LazyTensors(handles))

    # ---- forward -----------------------------------------------------------------------------------
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids: [T] -> hidden: [T, hidden]."""
        return F.embedding(token_ids, self.embed_tokens)

    def run_layers(self, hidden: torch.Tensor, layer_start: int, layer_end: int, attn_metadata: AttnMetadata,
                   kv_pool: KVPool) -> torch.Tensor:
        """Layers [layer_start, layer_end) over hidden: [T, hidden]; writes each layer's new K/V into kv_pool."""
        for i in range(layer_start, layer_end):
            hidden = self._layer(i, hidden, attn_metadata, kv_pool)
        return hidden

    def logits(self, hidden_last: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_last: [N, hidden] (after the last layer) -> [N, vocab] fp32, written into `out` if given."""
        logits = F.linear(self.ops.rms_norm(hidden_last, self.final_norm, self.config.rms_norm_eps), self.lm_head)
        return logits.float() if out is None else out.copy_(logits)

    def forward(self, token_ids: torch.Tensor, attn_metadata: AttnMetadata, kv_pool: KVPool,
                logits_out: torch.Tensor | None = None) -> torch.Tensor:
        """All layers; returns [S, vocab] logits of each sequence's last new token (in `logits_out` if given)."""
        hidden = self.run_layers(self.embed(token_ids), 0, self.num_layers, attn_metadata, kv_pool)
        return self.logits(hidden[attn_metadata.last_rows()], logits_out)

    def _layer(self, i: int, x: torch.Tensor, meta: AttnMetadata, kv_pool: KVPool) -> torch.Tensor:
        w, ops, eps = self.layers[i], self.ops, self.config.rms_norm_eps
        num_tokens, d = x.shape[0], self.head_dim
        qkv = F.linear(ops.rms_norm(x, w.input_norm, eps), w.qkv, w.qkv_bias)  # [T, (Hq + 2 Hk) * D]
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        q = q.view(num_tokens, self.num_heads, d)  # [T, Hq, D] strided views of qkv
        k = k.view(num_tokens, self.num_kv_heads, d)
        v = v.view(num_tokens, self.num_kv_heads, d)
        q, k = ops.apply_rope(q, k, meta.positions, self.cos_sin)
        kv_pool.store(i, k, v, meta.slot_mapping)
        if meta.is_decode:
            attn = ops.decode_attention(q, kv_pool.k[i], kv_pool.v[i], meta.block_tables, meta.seq_lens,
                                        self.scale, meta.num_splits)
        else:
            attn = ops.prefill_attention(q, kv_pool.k[i], kv_pool.v[i], meta.block_tables, meta.seq_lens,
                                         meta.query_start, self.scale, meta.max_query_len)
        x = x + F.linear(attn.reshape(num_tokens, -1), w.o_proj, w.o_bias)
        mlp_in = ops.rms_norm(x, w.post_norm, eps)
        return x + F.linear(ops.silu_mul(F.linear(mlp_in, w.gate_up)), w.down)


class _LazyTensors(Mapping):
    """name -> tensor over several safetensors files, read one tensor at a time."""

    def __init__(self, handles: list) -> None:
        self._where = {name: h for h in handles for name in h.keys()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def build_model(name_or_path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                weights: str | Path | None = None, seed: int = 0, use_triton: bool | None = None,
                num_layers: int | None = None) -> DecoderModel:
    """A model from a built-in config name or config.json path; random (seeded) weights unless `weights`.

    `num_layers` keeps only the first layers (timing runs that scale per-layer costs up).
    """
    config = load_config(name_or_path)
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    model = DecoderModel(config, device, dtype, use_triton)
    model = model.load_weights(weights) if weights is not None else model.init_random(seed)
    _ = model.cos_sin  # built now, not inside a CUDA-graph capture
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)  # weights written before partition streams read them
    return model
