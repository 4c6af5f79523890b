"""Token roles on the number tokenizer, the digit-by-digit SmolLM2 tokenizer, and a refusal."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mechclaims import ConfigError
from organisms.tokenizer import build_tokenizer
from mechclaims_icl.roles import roles
from mechclaims_icl.tasks import BLOG_PROMPT


def test_roles_of_the_blog_prompt_with_one_token_numbers():
    tok = build_tokenizer()
    r = roles(tok, BLOG_PROMPT)
    assert len(r.tokens) == 2 + 12 * 6 + 4  # BOS, \n, 12 lines of 6 tokens, "(42, "
    assert [tok.decode(list(r.tokens[i] for i in span)) for span in r.x[:2]] == ["28", "86"]
    assert [tok.decode(list(r.tokens[i] for i in span)) for span in r.y[:2]] == ["59", "175"]
    assert all(tok.decode([r.tokens[i]]) == " " for i in r.pre_y)
    assert all(p + 1 == span.start for p, span in zip(r.pre_y, r.y))
    assert tok.decode([r.tokens[r.query.start]]) == "42" and r.last == len(r.tokens) - 1


def test_roles_with_digit_by_digit_numbers(smollm2_tokenizer):
    r = roles(smollm2_tokenizer, BLOG_PROMPT)
    assert len(r.y[1]) == 3 and smollm2_tokenizer.decode([r.tokens[i] for i in r.y[1]]) == "175"
    assert len(r.x[0]) == 2


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from mechclaims.targets import TARGETS, default_cache_dir, default_fixtures_dir

    spec = TARGETS["smollm2-135m"]
    path = spec.resolve(spec, default_cache_dir(), default_fixtures_dir()).path
    return AutoTokenizer.from_pretrained(path)


class Merging:
    """The number tokenizer, except that it merges the first number with the comma after it (a
    tokenizer whose pieces cross the roles' edges), with offsets as a fast tokenizer gives them."""

    is_fast = True

    def __init__(self, tok):
        self.tok, self.bos_token_id = tok, tok.bos_token_id

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        k = next(i for i, (a, b) in enumerate(offsets) if text[a:b].isdigit())
        ids[k:k + 2] = [ids[k]]
        offsets[k:k + 2] = [(offsets[k][0], offsets[k + 1][1])]
        return {"input_ids": ids, "offset_mapping": offsets}


def test_a_tokenizer_that_merges_pieces_is_refused():
    tok = build_tokenizer()
    assert roles(tok, BLOG_PROMPT).x[0] == range(3, 4)  # negative control: the tokenizer itself is fine
    with pytest.raises(ConfigError, match=r"cannot give the task prompt's token roles: role 'x0' marks '28', but "
                                          r"token '28,' .* runs past it"):
        roles(Merging(tok), BLOG_PROMPT)
