"""What is read from a model directory before any weight is loaded: its sizes (``config.json``,
any family transformers knows) and its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TargetError
from ..hub import offline
from .spec import ModelShape


def read_shape(path: Path) -> ModelShape:
    """The sizes of the HF model in ``path``, from its ``config.json`` (any family: :data:`SHAPE_KEYS`)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise TargetError(f"cannot read {path / 'config.json'}: {first_line(exc)}; it must be the model's "
                          "JSON config (save_pretrained writes it)") from None
    if not isinstance(config, dict):
        raise TargetError(f"{path / 'config.json'} is not a JSON object; it must be the model's config")
    try:
        return ModelShape(**{name: _size(config, name) for name in SHAPE_KEYS})
    except KeyError as exc:
        raise TargetError(
            f"{path / 'config.json'} gives no {exc.args[0]} (looked for {', '.join(SHAPE_KEYS[exc.args[0]])}); "
            "mechclaims reads the sizes of causal LMs that transformers and TransformerBridge support "
            "(Llama, Qwen2, Gemma, GPT-2, GPT-NeoX, ...)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{path / 'config.json'} has a size that is not an integer ({first_line(exc)}); "
                          "correct config.json") from None


# Where each size lives in the config.json of the model families transformers knows: the
# first key present wins. Families name them differently (GPT-2 n_layer, n_head, n_embd,
# n_inner); a missing MLP width is 4 x d_model for GPT-2-like families, and missing key-value heads are
# the attention heads (no grouped-query attention).
SHAPE_KEYS: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads"),
    "n_key_value_heads": ("num_key_value_heads", "multi_query_group_num"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "d_mlp": ("intermediate_size", "n_inner", "ffn_dim"),
    "d_vocab": ("vocab_size",),
}


FOUR_X_MLP = ("gpt2", "gpt_bigcode", "gptj", "gpt_neo")  # families whose unset MLP width is 4 x d_model


def _size(config: dict, name: str) -> int:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for key in SHAPE_KEYS[name]:
        if text.get(key) is not None:
            return int(text[key])
    if name == "n_key_value_heads":
        return _size(config, "n_heads")
    if name == "d_mlp" and text.get("model_type") in FOUR_X_MLP:
        return 4 * _size(config, "d_model")
    raise KeyError(name)


FAST_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")  # one class in transformers 5


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of the HF directory ``path``, as the bridge loads it (BOS prepended).

    A directory whose ``tokenizer_config.json`` names the generic fast tokenizer is
    loaded by that class directly: what ``AutoTokenizer`` returns, without
    resolving the model's config class first (about 1 s of imports).
    """
    offline()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = path / "tokenizer_config.json"
    named = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    loader = PreTrainedTokenizerFast if named in FAST_TOKENIZER_CLASSES and (path / "tokenizer.json").is_file() else AutoTokenizer
    try:
        return loader.from_pretrained(str(path), add_bos_token=True)
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot load the tokenizer of {path}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
