"""Executor tests: tiny models on the CPU; Triton kernels run under the interpreter when there is no GPU."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before executor.triton_kernels imports triton.jit
    torch.set_num_threads(1)  # tiny tensors: threads only fight the other xdist worker

import pytest  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from executor.model import DecoderModel, build_model  # noqa: E402

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5)


def tiny_hf_config(arch: str):
    if arch == "llama":  # llama3 RoPE scaling with a short original context, so scaling changes results
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 32}
        return LlamaConfig(**TINY, rope_theta=10000.0, rope_scaling=scaling, tie_word_embeddings=False)
    return Qwen2Config(**TINY, rope_theta=1000000.0, tie_word_embeddings=True)  # q/k/v biases, tied embeddings


@pytest.fixture(params=[False, True], ids=["torch", "triton"])
def use_triton(request) -> bool:
    return request.param


class Checkpoint:
    """A tiny transformers model saved as config.json + safetensors, and helpers to compare against it."""

    def __init__(self, hf, path) -> None:
        self.hf, self.path = hf, path

    def ours(self, use_triton: bool, device: str = "cpu") -> DecoderModel:
        """Our model from the files transformers wrote (exercises load_config(path) and load_weights)."""
        return build_model(str(self.path), device=device, dtype=torch.float32, weights=self.path,
                           use_triton=use_triton)

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """[T, vocab] logits of a full forward over `token_ids`."""
        with torch.no_grad():
            return self.hf(torch.tensor([token_ids])).logits[0].float()

    def greedy(self, prompt: list[int], num_new: int) -> list[int]:
        with torch.no_grad():
            out = self.hf.generate(torch.tensor([prompt]), max_new_tokens=num_new, do_sample=False)
        return out[0, len(prompt):].tolist()


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def hf_checkpoint(request, tmp_path_factory) -> Checkpoint:
    """Tiny, fp32, every weight randomised (norms and biases too)."""
    torch.manual_seed(0)
    cls = LlamaForCausalLM if request.param == "llama" else Qwen2ForCausalLM
    hf = cls(tiny_hf_config(request.param)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return Checkpoint(hf, path)
