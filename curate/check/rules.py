"""The rules of `curate check`: one registry, each rule with an id, a severity, a one-line
message template and a fix hint.

Severity follows one principle: **error** when sd-scripts would fail, silently skip data, or
train on something other than what the files say; **warning** when the dataset trains as
written but is probably not what was meant. `[check] severity = {rule = "error"|"warning"|"off"}`
in curate.toml (or `[tool.curate.check]` in pyproject.toml) changes a rule's level, and
`disable = [...]` switches rules off.

| id | severity | what it catches |
|---|---|---|
| caption-missing | error | a training image without a caption (sd-scripts trains on the class tokens) |
| caption-empty | error | an empty caption file, or a blank first line |
| caption-multiline | error | text after the first line (sd-scripts reads only the first line) |
| caption-encoding | error | a caption that is not UTF-8, or starts with a byte-order mark |
| caption-unread | error | a caption not read: a symlink leaving the dataset, a FIFO, over 1 MiB |
| caption-control | warning | NUL or other control characters in a caption (trained as text) |
| separator-literal | warning | keep_tokens_separator in a caption whose tags never move: trained as text |
| caption-extension | error | captions beside the images with another extension than the one read |
| caption-extension-default | warning | no caption_extension written: sd-scripts defaults to `.caption` |
| caption-too-long | warning | more CLIP tokens than max_tokens (the rest is cut off) |
| trigger-missing | error | a training caption without the trigger word |
| trigger-not-first | error | the trigger is not first (nor in the head keep_tokens holds in place) |
| escaped-parentheses | warning | `\\(` in a caption: webui prompt escaping, read literally in training |
| tag-blacklisted | error | a tag of the blacklist |
| tags-contradict | warning | two tags of one exclusive group (blonde hair, brown hair) on one image |
| folder-name | error | an image folder not named `N_name` (sd-scripts skips it) |
| nested-folder | error | images in a subfolder of an image folder (never read) |
| image-unused | warning | images beside the image folders that no subset reads |
| extension-unsupported | error | an image format sd-scripts does not read (gif, tiff, heic...) |
| extension-plugin | warning | `.avif` / `.jxl`: sd-scripts reads them only with their Pillow plugins |
| extension-case | error | a mixed-case extension (`.Jpg`): sd-scripts matches lower or UPPER only |
| stem-shared | error | two images with one stem, so one caption file |
| image-unreadable | error | an image that cannot be decoded |
| image-too-small | warning | short side below min_size (upscaled into its bucket) |
| alpha-without-mask | warning | an image with an alpha channel in a subset without `alpha_mask = true` |
| duplicate-exact | error | the same file or the same pixels twice |
| duplicate-near | warning | perceptual hashes within near_threshold bits |
| network-alpha | warning | `network_alpha > network_dim` in a training config |
| dataset-config | error | a dataset.toml sd-scripts would refuse or misread |

The two trigger rules report a warning instead when the trigger is only guessed (the first
word of the subset's class_tokens or folder name) rather than set with `[check] trigger` or
`--trigger`: class tokens are often a class word ("cat"), not a trigger.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from curate.errors import CurateError
from curate.paths import display, printable

Severity = Literal["error", "warning"]
SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    message: str  # one line; `{name}` fields filled in by `make`
    hint: str  # how to fix it, same fields


@dataclass(frozen=True)
class Finding:
    """One problem: the file it is about (absolute), the other files it involves, the text."""

    rule: str
    severity: Severity
    path: Path
    message: str
    hint: str
    line: int | None = None
    related: tuple[Path, ...] = field(default=())

    def files(self) -> tuple[Path, ...]:
        return (self.path, *self.related)


RULES: dict[str, Rule] = {}


def shown(path: Path) -> str:
    """A path as printed: relative to the working folder when inside it (as pre-commit and
    GitHub annotations want), else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return display(path.as_posix())
    return display(path.as_posix() if rel.startswith("..") else Path(rel).as_posix())


def register(rule: Rule) -> Rule:
    if rule.id in RULES:
        raise ValueError(f"check rule {rule.id!r} registered twice")
    if rule.severity not in SEVERITIES:
        raise ValueError(f"check rule {rule.id!r}: severity must be one of {SEVERITIES}")
    RULES[rule.id] = rule
    return rule


def get(rule_id: str) -> Rule:
    try:
        return RULES[rule_id]
    except KeyError:
        raise CurateError(f"unknown check rule {rule_id!r}; valid: {', '.join(RULES)}") from None


def check_ids(ids: Iterable[str], where: str) -> None:
    unknown = [i for i in ids if i not in RULES]
    if unknown:
        raise CurateError(f"{where}: unknown rule(s) {', '.join(unknown)}; valid: {', '.join(RULES)}")


def make(rule_id: str, path: Path, line: int | None = None, related: Iterable[Path] = (),
         **fields: Any) -> Finding:
    """A finding of `rule_id` about `path`, its message and hint filled in from `fields`.

    Fields are names and caption text from the dataset: printable() turns undecodable bytes
    and control characters into escapes, so the text can be printed, written as JSON and sent
    as a GitHub annotation."""
    rule = RULES[rule_id]
    return Finding(rule.id, rule.severity, path, printable(rule.message.format(**fields)),
                   printable(rule.hint.format(**fields)), line, tuple(related))


def _rule(rule_id: str, severity: Severity, message: str, hint: str) -> None:
    register(Rule(rule_id, severity, message, hint))


_rule("caption-missing", "error", "{image} has no caption file {caption}",
      "write {caption} (curate tag, or by hand); without it sd-scripts trains on the class tokens only")
_rule("caption-empty", "error", "caption {caption} is empty{detail}",
      "put the tags on the first line, or remove the image and its caption")
_rule("caption-multiline", "error", "caption {caption} has text after line 1: sd-scripts reads only the "
      "first line", "join the lines into one line, tags separated by ', '")
_rule("caption-encoding", "error", "caption {caption} {problem}",
      "re-save it as UTF-8 without a byte-order mark")
_rule("caption-unread", "error", "caption {caption} {reason}",
      "replace it with a plain UTF-8 text file of at most 1 MiB inside the dataset")
_rule("caption-control", "warning", "caption {caption} holds control character(s) {chars}: sd-scripts "
      "trains them as text", "remove them (a NUL or an escape code is never a tag)")
_rule("separator-literal", "warning", "caption {caption} holds keep_tokens_separator '{separator}', but "
      "{source} neither shuffles nor drops tags: sd-scripts then trains '{separator}' as text",
      "set shuffle_caption = true on the subset, or remove '{separator}' from the captions")
_rule("caption-extension", "error", "caption {found} is not read: this subset reads '{ext}' ({why})",
      "{fix}")
_rule("caption-extension-default", "warning", "{where}: sd-scripts then reads '.caption' files, but "
      "the captions here are '{ext}'",
      "add caption_extension = \"{ext}\" to dataset.toml (curate layout writes it), or train with "
      "--caption_extension {ext}")
_rule("caption-too-long", "warning", "caption {caption} is {count} CLIP tokens{estimate}, over "
      "max_tokens {limit}: the rest is cut off", "drop minor tags (curate tags filter), or set "
      "[check] max_tokens = 150 or 225 if you train with --max_token_length")
_rule("trigger-missing", "error", "caption {caption} does not contain the trigger '{trigger}' ({source})",
      "curate captions trigger {folder} {trigger}")
_rule("trigger-not-first", "error", "caption {caption} has the trigger '{trigger}' as tag {position}, not "
      "first{kept} ({source})", "curate captions trigger {folder} {trigger} (puts it first, once)")
_rule("escaped-parentheses", "warning", "caption {caption} has escaped parentheses ({sample}): "
      "sd-scripts reads the backslashes literally",
      "write 'name (series)' without backslashes; escaping is for webui prompts only")
_rule("tag-blacklisted", "error", "caption {caption} has the blacklisted tag '{tag}'",
      "curate tags filter {folder} (removes blacklisted tags), or edit the caption")
_rule("tags-contradict", "warning", "caption {caption} has contradicting {group} tags: {tags}",
      "keep the right one (curate tags filter {folder} fixes tagger slips against the majority)")
_rule("folder-name", "error", "folder {folder} is not named N_name (repeats_class): sd-scripts skips "
      "its {count} image(s)", "rename it, e.g. to 10_{name}")
_rule("nested-folder", "error", "{count} image(s) in {folder}, a subfolder of the image folder "
      "{parent}: sd-scripts never reads them",
      "move them up into {parent} or into an N_name folder of their own")
_rule("image-unused", "warning", "{subject} is in no subset: sd-scripts never reads {them}", "{fix}")
_rule("extension-unsupported", "error", "{image}: sd-scripts does not read '{ext}' images",
      "convert it to PNG, JPEG or WebP")
_rule("extension-plugin", "warning", "{image}: sd-scripts reads '{ext}' images only with {plugin} "
      "installed, and skips them otherwise", "install {plugin} where you train, or convert it to PNG, "
      "JPEG or WebP")
_rule("extension-case", "error", "{image}: extension '{ext}' is mixed case; sd-scripts matches only "
      "all-lower or ALL-UPPER extensions and skips it", "rename it to {fixed}")
_rule("stem-shared", "error", "{image} and {other} share the stem '{stem}', so one caption file",
      "rename one of them (and its caption)")
_rule("image-unreadable", "error", "{image}: {reason}", "re-download or re-export it, or delete it")
_rule("image-too-small", "warning", "{image} is {width}x{height}: short side below min_size {limit} px",
      "use a larger copy, or remove it; small images are upscaled into their bucket and train blurry")
_rule("alpha-without-mask", "warning", "{image} has an alpha channel ({mode}) but its subset has no "
      "alpha_mask = true: transparent pixels train as whatever colour they hold",
      "set alpha_mask = true on the subset in dataset.toml, or flatten the image onto a background")
_rule("duplicate-exact", "error", "{image} is {relation} of {other}",
      "delete one of the two (curate dedupe DIR --move-to DIR-dups)")
_rule("duplicate-near", "warning", "{image} is a near duplicate of {other} (hash distance {distance})",
      "keep the better one (curate dedupe DIR --report dups.html shows them side by side)")
_rule("network-alpha", "warning", "{config}: network_alpha {alpha} > network_dim {dim}: every update "
      "is scaled up {scale}x", "set network_alpha to at most network_dim (commonly dim/2, or 1)")
_rule("dataset-config", "error", "{config}: {problem}", "{fix}")
