"""Tiny random Llama checkpoints written by the tests, loadable offline."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from organisms.tokenizer import build_tokenizer


def write_tiny_llama(path: Path, *, n_layers: int = 2, seed: int = 0) -> Path:
    """Save a random LlamaForCausalLM (GQA, d_model 32) and the number tokenizer to ``path``."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_digit_llama(path: Path, *, n_layers: int = 3, seed: int = 0) -> Path:
    """A random Llama whose tokenizer spells numbers digit by digit (as SmolLM2's does)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ("<pad>", "<bos>", "<eos>", "<unk>")
    vocab = {t: i for i, t in enumerate(specials + ("\n", "(", ",", " ", ")") + tuple("0123456789"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # lean towards digits, so answers run over several tokens
        model.lm_head.weight[[vocab[d] for d in "0123456789"]] *= 3.0
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_family(path: Path, family: str, *, n_layers: int = 2, seed: int = 0) -> Path:
    """A random causal LM of another family (``gpt2``, ``gpt_neox``, ``qwen2``, ``gemma``) with the
    number tokenizer, saved as an HF directory: what a user's own model looks like to the loader."""
    import transformers

    tokenizer = build_tokenizer()
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    configs = {
        "gpt2": lambda: transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=n_layers, n_head=4,
                                                n_positions=256, **special),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=n_layers,
                                                       num_attention_heads=4, intermediate_size=64,
                                                       max_position_embeddings=256, **special),
        "qwen2": lambda: transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=n_layers,
                                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                                  max_position_embeddings=256, tie_word_embeddings=False, **special),
        "gemma": lambda: transformers.GemmaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=n_layers,
                                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                  intermediate_size=64, max_position_embeddings=256, **special),
    }
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(configs[family]()).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
