"""Llama-3's real tokenizer (rebuilt offline from quicktok's ranks) and the post's pack on it:
numbers 0..999 are one token each, the space before a number is its own token, the answer is
read at the final ' ', and the token roles of a prompt are where the claims look for them."""

from __future__ import annotations

import numpy as np
import pytest

from mechclaims_icl.answers import answer_steps, answer_tokens, numbers_are_single_tokens
from mechclaims_icl.roles import roles
from mechclaims_icl.tasks import BLOG_PROMPT, CANONICAL, make_patch_pairs


def test_the_rebuilt_tokenizer_agrees_with_quicktok_on_known_and_random_text(llama3_tokenizer):
    import quicktok

    reference = quicktok.get_encoding("llama3")
    assert reference.encode("Hello world") == [9906, 1917] == llama3_tokenizer("Hello world").input_ids[1:]
    assert llama3_tokenizer("(28, 59)\n").input_ids == [128000, *reference.encode("(28, 59)\n")]
    assert len(reference.encode("(28, 59)\n")) == 6  # the post's six tokens per line
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 ,.()\n'!?-éü中文") + [" the", " 42", "\n\n", "  "]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(1, 40))))
        assert llama3_tokenizer(text, add_special_tokens=False).input_ids == reference.encode(text), repr(text)
    assert len(llama3_tokenizer) == 128256 and llama3_tokenizer.bos_token_id == 128000


def test_every_number_below_1000_is_one_token_and_the_space_before_it_its_own(llama3_tokenizer):
    tok = llama3_tokenizer
    singles = [len(tok(str(n), add_special_tokens=False).input_ids) for n in range(1000)]
    assert singles == [1] * 1000
    assert numbers_are_single_tokens(tok) and answer_steps(tok) == 1
    assert answer_tokens(tok, [87]) == [tok("87", add_special_tokens=False).input_ids]
    # "(42, " ends with ' ' as its own token: the answer is predicted there
    ids = tok("(42, ", add_special_tokens=False).input_ids
    assert [tok.decode([i]) for i in ids] == ["(", "42", ",", " "]


def test_token_roles_of_the_posts_prompt(llama3_tokenizer):
    r = roles(llama3_tokenizer, BLOG_PROMPT)
    tok = llama3_tokenizer
    assert r.tokens[0] == 128000 and llama3_tokenizer.decode([r.tokens[r.last]]) == " "
    assert [tok.decode([r.tokens[s.start]]) for s in r.x[:3]] == ["28", "86", "13"]
    assert [tok.decode([r.tokens[s.start]]) for s in r.y[:3]] == ["59", "175", "29"]
    assert all(tok.decode([r.tokens[p]]) == " " for p in r.pre_y)
    assert tok.decode([r.tokens[r.query.start]]) == "42" and len(r.tokens) == 2 + 12 * 6 + 4


def test_prompt_b_of_each_probe(llama3_tokenizer):
    """The post's B is <bos>(15, : five tokens; the newline probe adds one."""
    pairs = make_patch_pairs(CANONICAL, n_pairs=1, n_examples=12, seed=0)
    post = llama3_tokenizer(pairs.b_texts[0]).input_ids
    newline = llama3_tokenizer(pairs.with_probe("newline").b_texts[0]).input_ids
    assert len(post) == 5 and llama3_tokenizer.decode(post[-1:]) == " "
    assert len(newline) == 6 and newline[1:2] == llama3_tokenizer("\n", add_special_tokens=False).input_ids


@pytest.mark.parametrize("text", ["(15, ", "\n(15, "])
def test_the_space_before_the_answer_is_never_merged(llama3_tokenizer, text):
    assert llama3_tokenizer(text + "33", add_special_tokens=False).input_ids[:-1] == \
        llama3_tokenizer(text, add_special_tokens=False).input_ids
