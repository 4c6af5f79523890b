"""A tokenizer in which every integer 0..999 is one token, plus the format tokens of `(x, y)\\n`."""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
FORMAT_TOKENS = ("\n", "(", ",", " ", ")\n")
MAX_NUMBER = 999

SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
VOCAB: dict[str, int] = {
    tok: i for i, tok in enumerate(SPECIAL_TOKENS + FORMAT_TOKENS + tuple(str(n) for n in range(MAX_NUMBER + 1)))
}
PAD_ID, BOS_ID, EOS_ID, UNK_ID = (VOCAB[t] for t in SPECIAL_TOKENS)
NEWLINE_ID, OPEN_ID, COMMA_ID, SPACE_ID, CLOSE_ID = (VOCAB[t] for t in FORMAT_TOKENS)
NUMBER_OFFSET = VOCAB["0"]
VOCAB_SIZE = len(VOCAB)

# Numbers of up to three digits, then the format tokens, then any other character (-> <unk>).
_SPLIT = r"\d{1,3}|\)\n|\n|\(|,| |[\s\S]"


def number_id(n: int) -> int:
    """Token id of the integer n (0..999)."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number {n} has no token: valid numbers are 0..{MAX_NUMBER}")
    return NUMBER_OFFSET + n


def id_to_number(token_id: int) -> int | None:
    """The integer a token id stands for, or None for a non-number token."""
    n = token_id - NUMBER_OFFSET
    return n if 0 <= n <= MAX_NUMBER else None


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the task tokenizer (adds BOS when add_special_tokens=True)."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
