"""The caption prompts (presets, templates, Florence-2 tasks) and the checks on returned captions,
on hand-made texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.tagging.tokens import TokenCounter
from curate.tagging.vlm import checks, prompts
from curate.tagging.vlm.checks import Context, first_failure
from curate.tagging.vlm.prompts import Values

GOOD = ("A young woman with long silver hair stands on a rainy city street at night, holding a red "
        "umbrella. Neon signs reflect in the puddles; the picture is a detailed anime illustration.")


def test_presets_fill_tags_trigger_and_class() -> None:
    values = Values(tags=("long hair", "red umbrella"), trigger="sks", class_word="woman")
    hybrid = prompts.prompt_for("qwen2_5_vl", "hybrid", None, values)
    assert "long hair, red umbrella" in hybrid and "{" not in hybrid
    for preset in ("short", "detailed", "no-names"):
        text = prompts.prompt_for("llava", preset, None, values)
        assert text == prompts.PRESETS[preset] and "long hair" not in text


def test_hybrid_without_tags_asks_as_detailed() -> None:
    assert prompts.prompt_for("smolvlm", "hybrid", None, Values()) == prompts.PRESETS["detailed"]


def test_user_template_placeholders_and_tidy() -> None:
    template = "Describe {trigger} the {class}. Tags: {tags}."
    full = prompts.prompt_for("server", "short", template, Values(("smile",), "sks", "dog"))
    assert full == "Describe sks the dog. Tags: smile."
    empty = prompts.prompt_for("server", "short", template, Values())
    assert empty == "Describe the. Tags:."
    assert prompts.prompt_for("server", "short", "Say {trigger} , {class} , hi", Values()) == "Say, hi"
    with pytest.raises(CurateError, match=r"unknown placeholder.*\{name\}"):
        prompts.check_template("Describe {name}")
    with pytest.raises(CurateError, match="empty"):
        prompts.check_template("  ")


def test_labels_name_the_preset_or_hash_the_template() -> None:
    assert prompts.label("detailed", None) == "detailed"
    a, b = prompts.label("short", "Describe it."), prompts.label("short", "Describe it!")
    assert a.startswith("prompt-") and len(a) == len("prompt-") + 12 and a != b
    assert prompts.uses_tags("hybrid", None) and not prompts.uses_tags("short", None)
    assert prompts.uses_tags("short", "tags: {tags}")


def test_florence_maps_presets_to_task_tokens() -> None:
    assert prompts.prompt_for("florence2", "short", None, Values()) == "<CAPTION>"
    assert prompts.prompt_for("florence2", "detailed", None, Values()) == "<MORE_DETAILED_CAPTION>"
    for preset in ("hybrid", "no-names"):
        assert prompts.prompt_for("florence2", preset, None, Values(("a",))) == "<DETAILED_CAPTION>"
        assert "<DETAILED_CAPTION>" in (prompts.florence_note(preset, None) or "")
    assert prompts.florence_note("short", None) is None
    assert prompts.prompt_for("florence2", "short", " <CAPTION> ", Values()) == "<CAPTION>"
    with pytest.raises(CurateError, match="task tokens"):
        prompts.prompt_for("florence2", "short", "Describe the image.", Values())


def test_hint_tags_display_form_unique_and_capped() -> None:
    names = ["long_hair", "^_^", "long_hair", *[f"t{i}" for i in range(50)]]
    hints = prompts.hint_tags(names, limit=10)
    assert hints[:2] == ("long hair", "^_^") and len(hints) == 10


def test_hint_tags_leave_out_the_trigger() -> None:
    """A Kohya folder's class tokens ("sks cat") come in as a tag: the made-up word is no hint."""
    hints = prompts.hint_tags(["sks cat", "cat", "SKS", "sksx", "orange_fur"], trigger="sks")
    assert hints == ("cat", "sksx", "orange fur")


def test_good_caption_passes_every_check() -> None:
    ctx = Context(budget="clip-225", no_names=True, trigger="sks", names=("hatsune_miku",))
    assert first_failure(GOOD, ctx) is None


@pytest.mark.parametrize("text", ["", "   ", "...", "\n\n"])
def test_empty(text: str) -> None:
    assert (first_failure(text, Context()) or "").startswith("empty caption")


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that request.",
    "I’m sorry, I can’t describe this image.",
    "I cannot provide a description of this image.",
    "Sorry, I am unable to process images of people.",
    "As an AI language model, I cannot see images.",
    "\"I apologize, but I won't describe that.\"",
    "Unfortunately, I can't view this picture.",
    "Here is my answer: I cannot help with this image.",
])
def test_refusals(text: str) -> None:
    assert (first_failure(text, Context()) or "").startswith("refusal:")


@pytest.mark.parametrize("text", [
    "A sorry-looking dog sits in the rain.",
    "The sign reads 'I can't stop' in bold letters.",
    "A woman who cannot swim stands at the edge of a pool.",
])
def test_not_refusals(text: str) -> None:
    assert checks.refusal(text, Context()) is None


@pytest.mark.parametrize("text", [
    "A woman stands in a field. The sky is blue. A woman stands in a field.",
    "A girl with a hat with a hat with a hat with a hat.",
    "The the the the picture shows a cat.",
    "Red, red, red, red, red dress.",
    "She wears a red dress and a red dress and a red dress and a red dress and a red dress.",
])
def test_repetition_loops(text: str) -> None:
    assert (first_failure(text, Context()) or "").startswith("repetition loop")


@pytest.mark.parametrize("text", [
    GOOD,
    "Very, very old trees stand in the park. The trees are tall.",
    "A cat sits on a mat beside a cat toy; the cat looks bored.",
])
def test_not_repetition(text: str) -> None:
    assert checks.repetition(text, Context()) is None


def test_budget_estimates_are_lower_bounds() -> None:
    long = " ".join(f"word{i % 7} thing" for i in range(120))  # 240 words, 360 pieces
    reason = checks.budget(long, Context(budget="clip-225"))
    assert reason and "at least" in reason and "CLIP" in reason and "225" in reason
    assert checks.budget(long, Context(budget="t5-256")) is None  # 240 words: may fit 256
    assert checks.budget(long, Context(budget="clip-75")) is not None
    assert "T5" in (checks.budget(long + " more" * 300, Context(budget="t5-512")) or "")
    assert checks.budget(long, Context(budget="none")) is None
    assert checks.budget(GOOD, Context(budget="clip-75")) is None


def test_budget_counts_exactly_with_a_clip_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import json

    folder = tmp_path / "tokenizer"
    folder.mkdir()
    # a byte-level vocabulary with no merges: one token per byte, so the count is the upper bound
    # (CLIP's byte table: printable bytes stand for themselves, the rest map from U+0100 on)
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    text = "abcde " * 20  # 20 pieces, 100 bytes: between the bounds of a 75 limit
    assert checks.budget(text, Context(budget="clip-75")) is None  # the estimate cannot tell
    counted = checks.budget(text, Context(budget="clip-75", counter=TokenCounter(str(folder))))
    assert counted and "100 CLIP tokens" in counted and "at least" not in counted


def test_leaks_in_no_names_captions_only() -> None:
    ctx = Context(no_names=True, trigger="sks", names=("hatsune_miku", "saber_(fate)"))
    assert "trigger" in (checks.leak("A photo of sks standing.", ctx) or "")
    assert "'hatsune miku'" in (checks.leak("Hatsune Miku sings on stage.", ctx) or "")
    assert "'saber'" in (checks.leak("Saber holds a sword.", ctx) or "")
    assert checks.leak("Two asks standing; a sabertooth.", ctx) is None  # whole words only
    assert checks.leak("Hatsune Miku sings.", Context(trigger="sks", names=("hatsune_miku",))) is None


def test_checks_can_be_switched_off_and_run_in_order() -> None:
    text = "I'm sorry, I cannot do that. I'm sorry, I cannot do that."
    assert (first_failure(text, Context()) or "").startswith("refusal")
    assert (first_failure(text, Context(), ("repetition",)) or "").startswith("repetition")
    assert first_failure(text, Context(), ()) is None
    assert checks.clean("  a\n b\t c ") == "a b c"
