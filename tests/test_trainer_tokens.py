"""Long captions (max_token_length 150/225) cut into CLIP windows and stitched back as sd-scripts.

Expected ids are worked by hand from the caption's raw tokens (no BOS/EOS), not by the slicing
formula under test; states are compared with single windows encoded on their own.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from curate.trainer.model import Models, encode_prompts  # noqa: E402
from curate.trainer.tokens import hidden_states, tokenize  # noqa: E402
from fixtures.tiny_sd import build_components, byte_vocab  # noqa: E402

# single-letter words without merges: one token each, cycling through 16 ids
LETTERS = "bcdfgjklmpqvwxyz"


def caption(n: int) -> str:
    return " ".join(LETTERS[i % len(LETTERS)] for i in range(n))


@pytest.fixture(scope="module")
def parts() -> dict[str, Any]:
    return build_components()


@pytest.fixture(scope="module")
def sd2_tokenizer() -> Any:
    """The tiny tokenizer padding with "!" instead of EOS, as SD 2.x's does."""
    from transformers import CLIPTokenizer

    vocab, merges = byte_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!")
    tokenizer.model_max_length = 77
    return tokenizer


def raw(tokenizer: Any, n: int) -> list[int]:
    ids: list[int] = tokenizer(caption(n), add_special_tokens=False).input_ids
    assert len(ids) == n
    return ids


def test_ids_150_long_and_short_caption(parts: dict[str, Any]) -> None:
    tok = parts["tokenizer"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert tok.pad_token_id == eos  # SD 1.x: padding is EOS
    t = raw(tok, 100)
    ids = tokenize(tok, [caption(100), caption(10)], 150)
    assert ids.shape == (2, 2, 77)
    assert ids[0, 0].tolist() == [bos, *t[:75], eos]
    assert ids[0, 1].tolist() == [bos, *t[75:100], *[eos] * 51]
    short = t[:10]
    assert ids[1, 0].tolist() == [bos, *short, *[eos] * 66]
    assert ids[1, 1].tolist() == [bos, *[eos] * 76]


def test_ids_225_truncates_at_225_tokens(parts: dict[str, Any]) -> None:
    tok = parts["tokenizer"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    t = raw(tok, 240)
    ids = tokenize(tok, [caption(240), caption(160)], 225)
    assert ids.shape == (2, 3, 77)
    for k in range(3):
        assert ids[0, k].tolist() == [bos, *t[75 * k:75 * (k + 1)], eos]
    assert ids[1, 2].tolist() == [bos, *t[150:160], *[eos] * 66]


def test_ids_sd2_padding_repairs(sd2_tokenizer: Any) -> None:
    tok = sd2_tokenizer
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    assert pad != eos
    t = raw(tok, 100)
    ids = tokenize(tok, [caption(100), caption(10)], 150)
    # a full window ends in a real token: its trailing PAD becomes EOS
    assert ids[0, 0].tolist() == [bos, *t[:75], eos]
    assert ids[0, 1].tolist() == [bos, *t[75:100], eos, *[pad] * 50]
    assert ids[1, 0].tolist() == [bos, *t[:10], eos, *[pad] * 65]
    # an empty window would start with PAD: it starts with EOS instead
    assert ids[1, 1].tolist() == [bos, eos, *[pad] * 75]


def test_75_is_one_plain_window(parts: dict[str, Any]) -> None:
    tok = parts["tokenizer"]
    ids = tokenize(tok, [caption(100), caption(3)])
    plain = tok([caption(100), caption(3)], padding="max_length", max_length=77, truncation=True,
                return_tensors="pt").input_ids
    assert ids.shape == (2, 1, 77)
    assert torch.equal(ids[:, 0], plain)


def _models(parts: dict[str, Any]) -> Models:
    return Models(unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"].eval(),
                  tokenizer=parts["tokenizer"], noise_scheduler=parts["scheduler"], vae_scale=0.18215,
                  v_parameterization=False)


@pytest.mark.parametrize("clip_skip", [None, 2])
def test_75_matches_the_previous_encoding(parts: dict[str, Any], clip_skip: int | None) -> None:
    """The behaviour before long captions: pad to 77, one forward pass."""
    models, captions = _models(parts), [caption(100), caption(5)]
    te = models.text_encoder
    ids = models.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                           return_tensors="pt").input_ids
    with torch.no_grad():
        if clip_skip is None:
            expected = te(ids).last_hidden_state
        else:
            inner = getattr(te, "text_model", te)
            expected = inner.final_layer_norm(te(ids, output_hidden_states=True).hidden_states[-clip_skip])
        got = encode_prompts(models, captions, clip_skip)
    assert got.shape == (2, 77, 32)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("clip_skip", [None, 2])
def test_225_states_are_stitched_windows(parts: dict[str, Any], clip_skip: int | None) -> None:
    models, captions = _models(parts), [caption(240), caption(20)]
    with torch.no_grad():
        got = encode_prompts(models, captions, clip_skip, max_token_length=225)
        ids = tokenize(models.tokenizer, captions, 225)
        windows = [hidden_states(models.text_encoder, ids[:, k:k + 1], clip_skip) for k in range(3)]
    assert got.shape == (2, 227, 32)
    torch.testing.assert_close(got[:, 0], windows[0][:, 0])
    for k in range(3):
        torch.testing.assert_close(got[:, 1 + 75 * k:76 + 75 * k], windows[k][:, 1:76])
    torch.testing.assert_close(got[:, 226], windows[2][:, 76])


@pytest.mark.parametrize("clip_skip", [None, 2])
def test_short_caption_first_window_equals_75_mode(parts: dict[str, Any], clip_skip: int | None) -> None:
    """In sd-scripts the first window of a short caption has the 75-mode ids exactly (BOS, tokens,
    EOS padding, and the long row's last id, EOS), so positions 0..75 carry the same states; the
    last position differs: it is the EOS of the all-padding second window."""
    models, captions = _models(parts), [caption(30), caption(1)]
    with torch.no_grad():
        long = encode_prompts(models, captions, clip_skip, max_token_length=150)
        short = encode_prompts(models, captions, clip_skip)
    assert long.shape == (2, 152, 32)
    torch.testing.assert_close(long[:, :76], short[:, :76])
    assert not torch.allclose(long[:, 76:151], short[:, 1:76])


def test_unknown_length_is_refused(parts: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_token_length"):
        tokenize(parts["tokenizer"], ["a"], 100)
