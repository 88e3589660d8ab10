"""Checks on a caption a model returned: each returns a one-line reason, or None when it passes.

Pure functions on text. A caption that fails is not stored: the stage records the reason as a
decision and leaves the image for a re-try or a hand edit.

Token budgets: CLIP (SD 1.x, SDXL) reads 75 tokens per chunk, 150 or 225 with sd-scripts'
`max_token_length`; T5 reads 512 tokens in FLUX and 256 in SD3 (their trainers' default
`t5xxl_max_token_length`). CLIP tokens are counted exactly when a CLIP tokenizer is on disk
(curate.tagging.tokens); without one, and for T5 always, the count is a lower bound (CLIP:
one token per word, digit or punctuation run; T5: one per whitespace-separated word), so a
caption is only refused when it is surely over, never on an estimate that might fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from curate.tagging.tokens import Count

CHECKS = ("empty", "refusal", "repetition", "budget", "leak")
BUDGETS: dict[str, tuple[str, int]] = {
    "none": ("", 0),
    "clip-75": ("clip", 75), "clip-150": ("clip", 150), "clip-225": ("clip", 225),
    "t5-256": ("t5", 256), "t5-512": ("t5", 512),
}

# Openings of a refusal (after apostrophes are made straight), and phrases that give one away
# anywhere in the first sentences.
REFUSAL_START = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry[,.!]|i apologi[sz]e|i can'?t|i cannot|i can not|i'?m unable|"
    r"i am unable|i'?m not able|i am not able|i won'?t|i will not|unfortunately,? i)\b", re.IGNORECASE)
REFUSAL_ANYWHERE = re.compile(
    r"\bas an ai\b|\bi'?m an ai\b|\bi am an ai\b|\bcannot (?:help|assist) with\b|"
    r"\b(?:can'?t|cannot|unable to) (?:describe|identify|caption|process) (?:this|the|that|images?)\b",
    re.IGNORECASE)
REFUSAL_WINDOW = 300  # characters: a refusal says so at once
WORD = re.compile(r"\w+(?:'\w+)?")


class Counter(Protocol):
    """Counts tokens for a limit: curate.tagging.tokens.TokenCounter is one."""

    def over(self, text: str, limit: int) -> Count | None: ...


@dataclass(frozen=True)
class Context:
    """What the checks of one caption know besides its text."""

    budget: str = "none"
    counter: Counter | None = None  # CLIP counts; None: the lower-bound estimate
    no_names: bool = False  # the prompt asked not to name the character
    trigger: str | None = None
    names: Sequence[str] = field(default_factory=tuple)  # tags that must not appear (no_names)


def clean(text: str) -> str:
    """The caption as stored: one line, whitespace collapsed."""
    return " ".join(text.split())


def empty(text: str, ctx: Context) -> str | None:
    if not re.search(r"\w", text):
        return "empty caption: the model returned no words"
    return None


def refusal(text: str, ctx: Context) -> str | None:
    head = text[:REFUSAL_WINDOW].replace("\u2019", "'").strip().lstrip("\"'*")
    found = REFUSAL_START.match(head) or REFUSAL_ANYWHERE.search(head)
    if found:
        return f"refusal: the model answered {_quote(head, found.start())}"
    return None


def repetition(text: str, ctx: Context) -> str | None:
    """A loop: a sentence said twice, or a run of words repeated back to back (n words, at
    least 4 times for n <= 2, 3 times for longer runs)."""
    sentences = [" ".join(WORD.findall(s.lower())) for s in re.split(r"[.!?]+", text)]
    seen: set[str] = set()
    for sentence in sentences:
        if len(sentence.split()) >= 4 and sentence in seen:
            return f"repetition loop: the sentence {sentence!r} comes more than once"
        seen.add(sentence)
    words = [w.lower() for w in WORD.findall(text)]
    for size in range(1, 13):
        need = 4 if size <= 2 else 3
        run = _longest_run(words, size)
        if run[1] >= need:
            phrase = " ".join(words[run[0]:run[0] + size])
            return f"repetition loop: {phrase!r} repeated {run[1]} times in a row"
    return None


def _longest_run(words: Sequence[str], size: int) -> tuple[int, int]:
    """(start, count) of the longest back-to-back repetition of a `size`-word phrase."""
    best = (0, 1)
    for start in range(len(words) - 2 * size + 1):
        count = 1
        while words[start:start + size] == words[start + count * size:start + (count + 1) * size]:
            count += 1
        if count > best[1]:
            best = (start, count)
    return best


def budget(text: str, ctx: Context) -> str | None:
    kind, limit = BUDGETS[ctx.budget]
    if not kind:
        return None
    if kind == "clip":
        count = ctx.counter.over(text, limit) if ctx.counter else _estimate(text, limit, clip=True)
    else:
        count = _estimate(text, limit, clip=False)
    if count is None:
        return None
    how = "" if count.exact else "at least "
    trainer = "CLIP" if kind == "clip" else "T5"
    return (f"over the token budget: {how}{count.tokens} {trainer} tokens, the limit is {limit} "
            f"({ctx.budget}); the trainer would cut the rest off")


def _estimate(text: str, limit: int, *, clip: bool) -> Count | None:
    from curate.tagging.tokens import pieces

    low = len(pieces(text)) if clip else len(text.split())
    return Count(low, False) if low > limit else None


def leak(text: str, ctx: Context) -> str | None:
    """The trigger word or a listed name in a caption asked not to name anyone."""
    if not ctx.no_names:
        return None
    for name in ([ctx.trigger] if ctx.trigger else []) + list(ctx.names):
        for form in name_forms(name):
            if re.search(rf"(?<!\w){re.escape(form)}(?!\w)", text, re.IGNORECASE):
                what = "the trigger word" if name == ctx.trigger else "the name"
                return f"leak: {what} {form!r} is in a no-names caption (the trigger should carry it)"
    return None


def name_forms(name: str) -> list[str]:
    """How a tag may be written in prose: `hatsune_miku` -> `hatsune miku`; `saber_(fate)` ->
    `saber (fate)` and `saber`."""
    spaced = " ".join(name.replace("_", " ").split())
    forms = [spaced]
    bare = re.sub(r"\s*\([^()]*\)\s*$", "", spaced)
    if bare and bare != spaced:
        forms.append(bare)
    return [f for f in forms if len(f) >= 2]


RUNNERS: dict[str, Callable[[str, Context], str | None]] = {
    "empty": empty, "refusal": refusal, "repetition": repetition, "budget": budget, "leak": leak}


def first_failure(text: str, ctx: Context, checks: Sequence[str] = CHECKS) -> str | None:
    """The first failing check's reason, in CHECKS order (empty before the others)."""
    for name in CHECKS:
        if name in checks:
            reason = RUNNERS[name](text, ctx)
            if reason:
                return reason
    return None


def _quote(text: str, start: int, width: int = 60) -> str:
    part = text[start:start + width]
    return repr(part + ("..." if len(text) > start + width else ""))
