"""The caption rules: one image's caption file as sd-scripts reads it (`read_caption` in
train_util.py: UTF-8, first line only, empty file refused) and the tags in it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from curate.check.config import CheckConfig
from curate.check.dataset import CAPTION_EXTS, Subset
from curate.check.rules import Finding, make, shown
from curate.kohya import caption_lines, caption_names, caption_text, read_caption_bytes
from curate.tagging.captions import SEPARATOR, parse_caption
from curate.tagging.rules import Rules
from curate.tagging.tags import tag_key
from curate.tagging.tokens import TokenCounter

ESCAPED = re.compile(r"\\[()]")
# Control characters sd-scripts keeps in a caption (tab and the line break of wildcard lines aside).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Tags that make two values of an exclusive group legitimate on one image.
MIXED = {
    "hair_colour": frozenset({"multicolored hair", "two-tone hair", "gradient hair", "streaked hair",
                              "split-color hair", "colored inner hair"}),
    "eye_colour": frozenset({"heterochromia"}),
}


@dataclass(frozen=True)
class Trigger:
    word: str  # tag_key form
    shown: str
    source: str  # where it came from, for the message
    guessed: bool  # from class_tokens / the folder name, not set by the user


def trigger_for(subset: Subset, config: CheckConfig) -> Trigger | None:
    """The word a training subset's captions must start with; reg subsets have none."""
    if subset.is_reg:
        return None
    if config.trigger:
        return Trigger(tag_key(config.trigger), config.trigger, "[check] trigger", False)
    if subset.class_tokens:
        # "sks woman" -> "sks": captions may carry the class token as a tag of its own
        first = tag_key(subset.class_tokens).split(" ")[0]
        if first:
            return Trigger(first, first, f"guessed from the class tokens of {subset.source}", True)
    return None


@dataclass
class CaptionRules:
    """Everything the per-caption rules need, built once per check."""

    config: CheckConfig
    rules: Rules
    blacklist: frozenset[str]
    counter: TokenCounter

    def on(self, rule_id: str) -> bool:
        return self.config.enabled(rule_id)


def check_caption(image: Path, subset: Subset, ext: str, names: set[str], ctx: CaptionRules,
                  roots: tuple[Path, ...]) -> list[Finding]:
    """Findings about the caption of one image sd-scripts reads from `subset`; `roots` are the
    folders a symlinked caption may lead into (see curate.kohya.unsafe_caption_reason)."""
    name = next((n for n in caption_names(image.name, ext) if n in names), None)
    if name is None:
        return _absent(image, image.with_name(os.path.splitext(image.name)[0] + ext), subset, ext, names, ctx)
    caption = image.with_name(name)
    cap = caption.name  # the finding's path names the folder; the message names the file
    data = read_caption_bytes(caption, roots)
    if isinstance(data, str):
        return [make("caption-unread", caption, None, (image,), caption=cap, reason=data)]
    if data.startswith(b"\xef\xbb\xbf"):
        return [make("caption-encoding", caption, 1, (image,), caption=cap,
                     problem="starts with a UTF-8 byte-order mark, which sd-scripts keeps as text")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return [make("caption-encoding", caption, line, (image,), caption=cap,
                     problem=f"is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})")]
    read = caption_text(text, subset.enable_wildcard)
    if not read:
        detail = "" if read is None or not text.strip() else " on line 1, the only line sd-scripts reads"
        return [make("caption-empty", caption, 1, (image,), caption=cap, detail=detail)]
    found = []
    lines = caption_lines(text)
    extra = next((i + 2 for i, line in enumerate(lines[1:]) if line.strip()), None)
    if extra is not None and not subset.enable_wildcard:
        found.append(make("caption-multiline", caption, extra, (image,), caption=cap))
    found += _content_rules(image, caption, read, subset, cap)
    seen: set[tuple[str, str]] = set()
    for variant in read.split("\n"):  # with enable_wildcard each line is trained in turn
        full = _with_prefix(variant, subset)
        for finding in (*_text_rules(image, caption, full, cap, ctx),
                        *_tag_rules(image, caption, parse_caption(full), subset, cap, ctx),
                        *_trigger_rules(image, caption, full, subset, cap, ctx)):
            if (finding.rule, finding.message) not in seen:
                seen.add((finding.rule, finding.message))
                found.append(finding)
    return found


def _with_prefix(caption: str, subset: Subset) -> str:
    """The caption as sd-scripts trains it: caption_prefix and caption_suffix joined by a space."""
    if subset.caption_prefix:
        caption = f"{subset.caption_prefix} {caption}"
    if subset.caption_suffix:
        caption = f"{caption} {subset.caption_suffix}"
    return caption


def _content_rules(image: Path, caption: Path, read: str, subset: Subset, cap: str) -> list[Finding]:
    found = []
    controls = sorted(set(CONTROL.findall(read)))
    if controls:
        chars = ", ".join(f"\\x{ord(c):02x}" for c in controls[:5])
        found.append(make("caption-control", caption, 1, (image,), caption=cap, chars=chars))
    separator = subset.keep_tokens_separator
    if separator and separator in read and not subset.tags_move:
        found.append(make("separator-literal", caption, 1, (image,), caption=cap, separator=separator,
                          source=subset.source))
    return found


def _absent(image: Path, caption: Path, subset: Subset, ext: str, names: set[str],
            ctx: CaptionRules) -> list[Finding]:
    stem = caption.stem
    others = [stem + e for e in dict.fromkeys((*CAPTION_EXTS, ctx.config.caption_ext))
              if e != ext and stem + e in names]
    if others:
        found = image.with_name(others[0])
        found_ext = os.path.splitext(others[0])[1]
        if subset.caption_extension is not None:
            why = "caption_extension in dataset.toml"
            fix = f"set caption_extension = \"{found_ext}\" on the subset, or rename the captions to {ext}"
        else:
            why, fix = ("[check] caption_ext, as no dataset.toml sets one",
                        f"rename the captions to {ext}, or set [check] caption_ext = \"{found_ext}\" "
                        f"and train with --caption_extension {found_ext}")
        return [make("caption-extension", found, None, (image,), found=found.name, ext=ext,
                     why=why, fix=fix)]
    if subset.is_reg:  # regularisation images are normally captioned by their class tokens
        return []
    return [make("caption-missing", image, None, image=image.name, caption=caption.name)]


def _text_rules(image: Path, caption: Path, first: str, cap: str, ctx: CaptionRules) -> Iterable[Finding]:
    match = ESCAPED.search(first)
    if match and ctx.on("escaped-parentheses"):
        start = first.rfind(",", 0, match.start()) + 1
        end = first.find(",", match.end())
        sample = first[start: end if end >= 0 else None].strip()
        yield make("escaped-parentheses", caption, 1, (image,), caption=cap, sample=sample)
    if ctx.on("caption-too-long"):
        limit = ctx.config.max_tokens
        count = ctx.counter.over(first.replace(SEPARATOR, ","), limit)
        if count is not None:
            estimate = "" if count.exact else " at least (estimated without the CLIP vocabulary)"
            yield make("caption-too-long", caption, 1, (image,), caption=cap, count=count.tokens,
                       estimate=estimate, limit=limit)


def _tag_rules(image: Path, caption: Path, tags: list[str], subset: Subset, cap: str,
               ctx: CaptionRules) -> Iterable[Finding]:
    keys = [tag_key(t) for t in tags]
    folder = shown(subset.image_dir)
    for tag, key in zip(tags, keys, strict=True):
        if key in ctx.blacklist:
            yield make("tag-blacklisted", caption, 1, (image,), caption=cap, tag=tag, folder=folder)
    if ctx.on("tags-contradict") and not _several_people(set(keys), ctx.rules):
        for group, tag_names in _contradictions(keys, tags, ctx.rules):
            yield make("tags-contradict", caption, 1, (image,), caption=cap, group=group.replace("_", " "),
                       tags=", ".join(tag_names), folder=folder)


def _trigger_rules(image: Path, caption: Path, first: str, subset: Subset, cap: str,
                   ctx: CaptionRules) -> Iterable[Finding]:
    """The trigger first, or at least inside the head sd-scripts never shuffles: the tags before
    the keep_tokens_separator, else the first keep_tokens tags."""
    trigger = trigger_for(subset, ctx.config)
    if trigger is None or not ctx.config.enabled("trigger-missing", "trigger-not-first"):
        return
    keys = [tag_key(t) for t in parse_caption(first)]
    head = len(parse_caption(first.split(SEPARATOR)[0])) if SEPARATOR in first else max(1, subset.keep_tokens)
    at = next((i for i in range(len(keys)) if _trigger_at(keys, i, trigger.word)), None)
    if at is not None and at < head:
        return
    fields = dict(caption=cap, trigger=trigger.shown, source=trigger.source, folder=shown(subset.image_dir))
    if at is None:
        finding = make("trigger-missing", caption, 1, (image,), **fields)
    else:
        kept = f" nor in the first {head} tags that keep_tokens holds in place" if head > 1 else ""
        finding = make("trigger-not-first", caption, 1, (image,), position=at + 1, kept=kept, **fields)
    yield replace(finding, severity="warning") if trigger.guessed else finding


def _trigger_at(keys: list[str], index: int, word: str) -> bool:
    """The trigger starts at tag `index`: as the whole tag, as the tag's first word(s)
    ("sks woman"), or spread over consecutive tags ("sks, woman" for "sks woman")."""
    if keys[index] == word or keys[index].startswith(word + " "):
        return True
    joined = ""
    # a spread trigger covers at most one tag per word: never copy the rest of the caption
    # (`keys[index:]` made a long caption quadratic)
    for key in keys[index: index + word.count(" ") + 1]:
        joined = f"{joined} {key}".strip()
        if joined == word:
            return True
        if not word.startswith(joined + " "):
            return False
    return False


def _several_people(keys: set[str], rules: Rules) -> bool:
    return bool(keys & rules.multi_person) or len(keys & rules.person_counts) > 1


def _contradictions(keys: list[str], tags: list[str], rules: Rules) -> Iterable[tuple[str, list[str]]]:
    present = set(keys)
    for group, members in rules.exclusive.items():
        if present & MIXED.get(group, frozenset()):
            continue
        hits = [k for k in dict.fromkeys(keys) if k in members]
        # "light brown hair" beside "brown hair" is redundant, not a contradiction
        hits = [k for k in hits if not any(k in rules.implies.get(o, ()) for o in hits if o != k)]
        if len(hits) > 1:
            yield group, [tags[keys.index(k)] for k in hits]
