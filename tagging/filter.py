"""Clean a dataset's tags before they become captions: `filter_tags(dataset, rules, config)`.

Bad tags hurt a LoRA more than a few weak images ("a single 'brown hair' in a blonde character
... will make the generations randomly show brown hair"). The rules run in this order, each on
the result of the one before, and every tag they take out is recorded with the rule and why:

1. `min_confidence`: a tag below its category's threshold (`("*", t)` covers the rest).
2. `blacklist`: the rules' blacklist plus `FilterConfig.blacklist`.
3. `exclusive:<group>` (single-character datasets only); see `_exclusive` for the exact rule.
4. `merge:<parts>><into>`: an image with every part of a merge and not its result gets the
   parts replaced by the result ("boots" + "red footwear" -> "red boots"), unless two merges
   would use the same tag (boots with two footwear colours), which is left alone as ambiguous.
5. `implies:<specific>><general>`: a tag made redundant by a more specific one in the same
   image, through chains too ("sleeves past fingers" drops "long sleeves").
6. `intrinsic` (`prune_intrinsic`): the character's fixed look, left to the trigger word.
7. `trigger`: the trigger word first, exactly once.

Images that show more than one person (`[people]` in the rules) are left out of 3 and 6: a
second hair colour there may belong to the other person. The trigger is never removed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from curate.errors import CurateError
from curate.tagging.rules import Rules
from curate.tagging.tags import CATEGORIES, Dataset, ScoredTag, tag_key

Work = dict[str, list[ScoredTag]]


@dataclass(frozen=True)
class FilterConfig:
    """What `filter_tags` does. `min_confidence` pairs are (category or "*", threshold)."""

    min_share: float = 0.15
    prune_intrinsic: bool = False
    trigger: str | None = None
    blacklist: tuple[str, ...] = ()
    min_confidence: tuple[tuple[str, float], ...] = ()
    implications: bool = True  # also switches the merges
    exclusive: bool = True
    single_character: bool = True
    # Below this many images for a group's majority tag, the exclusive rule cannot tell an
    # error from a second look, so it leaves the group alone.
    min_majority_images: int = 5


@dataclass(frozen=True)
class Removal:
    image: str
    tag: str
    rule: str
    detail: str


@dataclass(frozen=True)
class Addition:
    image: str
    tag: str
    rule: str
    detail: str


@dataclass
class FilterResult:
    dataset: dict[str, list[ScoredTag]]
    removals: list[Removal] = field(default_factory=list)
    additions: list[Addition] = field(default_factory=list)

    def diff(self) -> list[str]:
        """`image: - tag  (rule: detail)` lines (`+` for added tags), image by image in dataset
        order, removals before additions, each in the order the rules ran."""
        lines: dict[str, list[str]] = {image: [] for image in self.dataset}
        for sign, changes in (("-", self.removals), ("+", self.additions)):
            for change in changes:
                line = f"{change.image}: {sign} {change.tag}  ({change.rule}: {change.detail})"
                lines[change.image].append(line)
        return [line for image_lines in lines.values() for line in image_lines]

    def counts(self) -> dict[str, int]:
        """Removed tags per rule kind (`exclusive`, `implies`, `merge`, ...)."""
        return dict(Counter(removal.rule.split(":", 1)[0] for removal in self.removals))


class _Log:
    """Collects changes and refuses to touch the protected tag (the trigger)."""

    def __init__(self, protected: str | None) -> None:
        self.protected = protected
        self.removals: list[Removal] = []
        self.additions: list[Addition] = []

    def drop(self, work: Work, image: str, why: Callable[[ScoredTag], tuple[str, str] | None]) -> None:
        kept = []
        for tag in work[image]:
            reason = None if tag_key(tag.name) == self.protected else why(tag)
            if reason is None:
                kept.append(tag)
            else:
                self.removals.append(Removal(image, tag.name, *reason))
        work[image] = kept

    def drop_keys(self, work: Work, image: str, keys: frozenset[str], rule: str, detail: str) -> None:
        self.drop(work, image, lambda tag: (rule, detail) if tag_key(tag.name) in keys else None)


def filter_tags(dataset: Dataset, rules: Rules, config: FilterConfig = FilterConfig()) -> FilterResult:
    """A cleaned copy of `dataset` and a record of every change (the input is not modified)."""
    _check(config)
    work: Work = {image: list(tags) for image, tags in dataset.items()}
    log = _Log(tag_key(config.trigger) if config.trigger else None)
    if config.min_confidence:
        _min_confidence(work, dict(config.min_confidence), log)
    blacklist = rules.blacklist | {tag_key(name) for name in config.blacklist}
    if blacklist:
        for image in work:
            log.drop_keys(work, image, blacklist, "blacklist", "listed")
    if config.exclusive and config.single_character:
        for group, members in rules.exclusive.items():
            _exclusive(work, rules, group, members, config, log)
    if config.implications:
        _merge(work, rules, log)
        _implications(work, rules, log)
    if config.prune_intrinsic:
        detail = "the character's fixed look" + (", left to the trigger" if config.trigger else "")
        for image in _single_person(work, rules):
            log.drop_keys(work, image, rules.intrinsic, "intrinsic", detail)
    if config.trigger:
        _trigger(work, config.trigger, log)
    return FilterResult(work, log.removals, log.additions)


def _check(config: FilterConfig) -> None:
    if not 0.0 <= config.min_share <= 1.0:
        raise CurateError(f"min_share must be between 0 and 1, not {config.min_share}")
    for category, threshold in config.min_confidence:
        if category != "*" and category not in CATEGORIES:
            known = ", ".join(CATEGORIES)
            raise CurateError(f"min_confidence: unknown category '{category}'; use one of *, {known}")
        if not 0.0 <= threshold <= 1.0:
            raise CurateError(f"min_confidence for {category} must be between 0 and 1, not {threshold}")
    if config.trigger is not None and (not config.trigger.strip() or "," in config.trigger):
        raise CurateError(f"trigger {config.trigger!r} must be one non-empty tag without commas")


def _min_confidence(work: Work, thresholds: dict[str, float], log: _Log) -> None:
    def why(tag: ScoredTag) -> tuple[str, str] | None:
        threshold = thresholds.get(tag.category, thresholds.get("*"))
        if threshold is None or tag.confidence >= threshold:
            return None
        return "min_confidence", f"{tag.confidence:.2f} < {threshold:.2f} for {tag.category} tags"

    for image in work:
        log.drop(work, image, why)


def _single_person(work: Work, rules: Rules) -> list[str]:
    """Images that show one person as far as their tags tell (an untagged count counts as one)."""
    single = []
    for image, tags in work.items():
        keys = {tag_key(tag.name) for tag in tags}
        if not keys & rules.multi_person and len(keys & rules.person_counts) < 2:
            single.append(image)
    return single


def _exclusive(work: Work, rules: Rules, group: str, members: Iterable[str], config: FilterConfig,
               log: _Log) -> None:
    """Drop the group's rare tags from single-person images.

    Over the single-person images, count the images that carry each tag of the group; the
    majority tag M is the most counted (ties: the first in the group's list). A tag T is rare
    when count(T) / count(M) < min_share, and is then removed from every single-person image
    that carries it, with or without M beside it (an image that had only T keeps no tag of the
    group: nothing is ever added). Nothing is removed while count(M) < min_majority_images.
    Relative to M rather than to all images, so that a group most images leave untagged (eye
    colour in back views) is judged by the images that show it; counted per image rather than
    by co-occurrence with M, so a legitimate second look that never shares an image with M
    (a costume with dyed hair in 20% of the pictures) is kept.
    """
    order = {key: rank for rank, key in enumerate(members)}
    single = _single_person(work, rules)
    counts: Counter[str] = Counter()
    shown: dict[str, str] = {}  # key -> the name as the dataset spells it, for the diff
    for image in single:
        seen: dict[str, str] = {}
        for tag in work[image]:
            if tag_key(tag.name) in order:
                seen.setdefault(tag_key(tag.name), tag.name)
        counts.update(seen.keys())
        for key, name in seen.items():
            shown.setdefault(key, name)
    if not counts:
        return
    majority = min(counts, key=lambda key: (-counts[key], order[key]))
    top = counts[majority]
    if top < config.min_majority_images:
        return
    rare = {key for key, count in counts.items() if count / top < config.min_share}
    for key in rare:
        detail = (f"'{shown[majority]}' in {top} of {len(single)} images, '{shown[key]}' in {counts[key]} "
                  f"(< {config.min_share:.0%} of {top})")
        for image in single:
            log.drop_keys(work, image, frozenset({key}), f"exclusive:{group}", detail)


def _merge(work: Work, rules: Rules, log: _Log) -> None:
    for image, tags in work.items():
        keys = {tag_key(tag.name) for tag in tags}
        ready = [m for m in rules.merges if m.into not in keys and all(part in keys for part in m.parts)]
        uses = Counter(part for merge in ready for part in merge.parts)
        for merge in ready:
            if any(uses[part] > 1 for part in merge.parts):
                continue
            parts = [tag for tag in work[image] if tag_key(tag.name) in merge.parts]
            at = work[image].index(parts[0])
            combined = ScoredTag(merge.into, parts[0].category, min(tag.confidence for tag in parts))
            rule = f"merge:{'+'.join(tag.name for tag in parts)}>{merge.into}"
            log.drop_keys(work, image, frozenset(merge.parts), rule, f"combined into '{merge.into}'")
            work[image].insert(at, combined)
            log.additions.append(Addition(image, merge.into, rule, "combined from " + ", ".join(
                f"'{tag.name}'" for tag in parts)))


def _implications(work: Work, rules: Rules, log: _Log) -> None:
    for image, tags in work.items():
        present = [tag.name for tag in tags if tag_key(tag.name) in rules.implies]

        def why(tag: ScoredTag, present: list[str] = present) -> tuple[str, str] | None:
            key = tag_key(tag.name)
            for specific in present:
                if key in rules.implies[tag_key(specific)]:
                    return f"implies:{specific}>{tag.name}", f"redundant beside '{specific}'"
            return None

        log.drop(work, image, why)


def _trigger(work: Work, trigger: str, log: _Log) -> None:
    """Trigger first and exactly once; copies elsewhere in the caption are removed."""
    key = tag_key(trigger)
    for image, tags in work.items():
        if tags and tag_key(tags[0].name) == key and all(tag_key(t.name) != key for t in tags[1:]):
            continue
        first = tags[0] if tags and tag_key(tags[0].name) == key else None
        rest = [tag for tag in tags if tag_key(tag.name) != key]
        for tag in tags[1 if first else 0:]:
            if tag_key(tag.name) == key:
                detail = "duplicate of the first tag" if first else "moved to the front"
                log.removals.append(Removal(image, tag.name, "trigger", detail))
        if first is None:
            first = ScoredTag(trigger, "character", 1.0)
            log.additions.append(Addition(image, trigger, "trigger", "first tag of every caption"))
        work[image] = [first, *rest]
