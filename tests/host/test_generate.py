"""Generation: sampling rules and seeds, stop conditions, tokenizer lookup and streaming."""

import json
import shutil

import numpy as np
import pytest

from flightllm.host.build import BuildError
from flightllm.host.devices import GoldenDevice
from flightllm.host.generate import (
    Generation, Sampler, Tokenizer, TokenizerError, find_eos_id, find_tokenizer,
)
from flightllm.host.session import Session

from .conftest import MAX_LEN, MODEL, compile_tiny

PROMPT = [5, 6, 7, 8]


# ---- the sampler on its own
def test_greedy_is_the_first_largest_logit():
    row = np.array([0.5, 2.0, -1.0, 2.0])
    rng = np.random.default_rng(0)
    assert Sampler().choose(row, rng) == 1
    assert Sampler(temperature=0).choose(row, rng) == 1
    assert Sampler().greedy and not Sampler(top_k=2).greedy


def test_top_k_and_top_p_only_draw_from_the_kept_tokens():
    row = np.log(np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04]))
    rng = np.random.default_rng(0)
    draws = {Sampler(top_k=3, seed=0).choose(row, rng) for _ in range(400)}
    assert draws == {0, 1, 2}
    # 0.40 + 0.25 = 0.65 reaches 0.6: the two best are the nucleus.
    draws = {Sampler(top_p=0.6).choose(row, rng) for _ in range(400)}
    assert draws == {0, 1}
    # Negative control: with neither cut every token turns up.
    draws = {Sampler(temperature=1.0).choose(row, rng) for _ in range(2000)}
    assert draws == set(range(6))
    assert {Sampler(top_k=1, temperature=5.0).choose(row, rng) for _ in range(50)} == {0}


def test_sampler_rejects_bad_settings():
    for kw in ({"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1.0}):
        with pytest.raises(ValueError):
            Sampler(**kw)


# ---- generation on the golden device
def _generate(build, **kw):
    sampler = Sampler(**{k: kw.pop(k) for k in ("top_k", "top_p", "temperature", "seed")
                         if k in kw})
    gen = Generation(Session(build, GoldenDevice(build)), kw.pop("prompt", PROMPT),
                     kw.pop("max_new_tokens", 6), sampler, **kw)
    items = list(gen)
    assert [i.token for i in items] == gen.tokens and [i.index for i in items] == \
        list(range(len(items)))
    return gen


def test_greedy_generation_is_the_sessions(tiny_build):
    want = [t for t, _ in Session(tiny_build, GoldenDevice(tiny_build)).generate(PROMPT, 5)]
    assert _generate(tiny_build).tokens == want


def test_sampling_is_reproducible_with_its_seed(tiny_build):
    a = _generate(tiny_build, temperature=3.0, top_k=50, seed=7).tokens
    b = _generate(tiny_build, temperature=3.0, top_k=50, seed=7).tokens
    assert a == b
    others = [_generate(tiny_build, temperature=3.0, top_k=50, seed=s).tokens for s in (1, 2)]
    assert any(o != a for o in others)


def test_stops_after_max_new_tokens(tiny_build):
    gen = _generate(tiny_build, max_new_tokens=3)
    assert len(gen.tokens) == 3 and gen.stop_reason == "max_new_tokens"
    assert gen.session.position == len(PROMPT) + 2  # the last token is never decoded


def test_stops_at_the_eos_id(tiny_build):
    greedy = _generate(tiny_build, max_new_tokens=6).tokens
    eos = greedy[3]
    gen = _generate(tiny_build, max_new_tokens=6, eos_id=eos)
    assert gen.tokens == greedy[:greedy.index(eos) + 1] and gen.stop_reason == "eos"


def test_stops_at_max_len(tiny_build):
    prompt = list(range(1, MAX_LEN - 1))  # two slots left in the KV cache
    gen = _generate(tiny_build, prompt=prompt, max_new_tokens=20)
    assert gen.stop_reason == "max_len" and len(gen.tokens) == 3
    assert gen.session.position == MAX_LEN
    with pytest.raises(BuildError, match="max_len 32"):
        Generation(Session(tiny_build, GoldenDevice(tiny_build)), list(range(MAX_LEN + 1)), 1)


# ---- tokenizer
def _word_tokenizer(directory, vocab=256):
    from tokenizers import Tokenizer as HfTokenizer, decoders, models, pre_tokenizers
    tok = HfTokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def test_tokenizer_in_the_model_directory_and_its_eos(tmp_path):
    model_dir = tmp_path / "model"
    _word_tokenizer(model_dir)
    shutil.copy(MODEL, model_dir / "model.onnx")
    (model_dir / "config.json").write_text(json.dumps({"eos_token_id": [42, 43]}))
    build = compile_tiny(tmp_path / "build", model=model_dir / "model.onnx")
    tok = find_tokenizer(build)
    assert tok is not None and tok.path == model_dir / "tokenizer.json"
    assert find_eos_id(build, tok) == 42
    assert tok.encode("w5 w6 w7") == [5, 6, 7]
    gen = Generation(Session(build, GoldenDevice(build)), tok.encode("w5 w6 w7 w8"), 4,
                     tokenizer=tok)
    pieces = [item.text for item in gen]
    assert "".join(pieces) == tok.decode(gen.tokens)
    assert pieces[0] == f"w{gen.tokens[0]}" and pieces[1] == f" w{gen.tokens[1]}"


def test_no_tokenizer_and_a_bad_one(tiny_build, tmp_path):
    assert find_tokenizer(tiny_build) is None  # the committed test models come without one
    assert find_eos_id(tiny_build, None) is None
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        find_tokenizer(tiny_build, tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load the tokenizer"):
        find_tokenizer(tiny_build, tmp_path)
    path = _word_tokenizer(tmp_path / "ok")
    assert isinstance(find_tokenizer(tiny_build, path), Tokenizer)
