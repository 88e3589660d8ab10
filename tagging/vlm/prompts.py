"""What a caption model is asked: presets, the user's own template, Florence-2's task tokens.

Pure functions over plain data. A preset is a named template; the user's template (`prompt`)
wins over the preset. Templates may hold `{tags}` (the image's tags, comma-separated),
`{trigger}` and `{class}`; a placeholder with no value becomes empty and the spaces and commas
around it are tidied away. Florence-2 reads no instructions, only its task tokens: each preset
maps to one, and a template must be one of them (`florence_task`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from curate.errors import CurateError
from curate.tagging.select import format_tag

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("tags", "trigger", "class")

# The presets' texts. Each asks for plain prose with no preamble ("This image shows..."), no
# lists and no markdown: the answer goes into a caption file as it is.
PLAIN = "Answer with the caption only: plain sentences, no lists, no markdown, no preamble."
PRESETS: dict[str, str] = {
    "short": f"Write a one-sentence caption for this image: the subject and what it is doing. {PLAIN}",
    "detailed": ("Describe this image in detail in two to four sentences: the subject, their "
                 "appearance and clothing, pose and expression, the setting, lighting and the "
                 f"style of the picture. {PLAIN}"),
    "hybrid": ("Describe this image in two or three sentences: the subject, pose, setting and "
               "style. These tags describe it and may help (use what you can see): {tags}. " + PLAIN),
    "no-names": ("Describe this image in two to four sentences without naming the character, the "
                 "series or the artist: call the person by a plain description such as \"a woman\" "
                 "or \"a young man\", and describe their appearance, clothing, pose, the setting "
                 f"and the style. {PLAIN}"),
}
HYBRID_NO_TAGS = PRESETS["detailed"]  # hybrid for an image that has no tags to give

# Florence-2 is trained on task tokens only; its detailed task stands in for the presets that
# need instructions it cannot read (tags cannot be passed to it).
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
FLORENCE_PRESETS = {"short": "<CAPTION>", "detailed": "<MORE_DETAILED_CAPTION>",
                    "hybrid": "<DETAILED_CAPTION>", "no-names": "<DETAILED_CAPTION>"}
FLORENCE = "florence2"


@dataclass(frozen=True)
class Values:
    """What a template's placeholders are filled with for one image."""

    tags: tuple[str, ...] = ()  # display form ("long hair"), in caption order
    trigger: str | None = None
    class_word: str | None = None


def check_template(template: str, where: str = "caption.prompt") -> None:
    """A user template: only known placeholders, one line or more of text."""
    unknown = sorted(set(PLACEHOLDER.findall(template)) - set(PLACEHOLDERS))
    if unknown:
        raise CurateError(f"{where} = {template!r}: unknown placeholder(s) "
                          f"{', '.join('{' + u + '}' for u in unknown)}; known: "
                          f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if not template.strip():
        raise CurateError(f"{where} is empty: write the instruction, or leave it unset to use a preset")


def template_of(preset: str, prompt: str | None) -> str:
    """The template for this run: the user's prompt, else the preset's text."""
    if prompt:
        return prompt
    if preset not in PRESETS:
        raise CurateError(f"caption preset {preset!r}: unknown; presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


def label(preset: str, prompt: str | None) -> str:
    """How a caption's source names its prompt: the preset, or `prompt-<hash>` of a template."""
    if not prompt:
        return preset
    return "prompt-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]


def fill(template: str, values: Values, *, preset: str | None = None) -> str:
    """The prompt for one image. The hybrid preset on an image without tags asks as `detailed`
    does (a sentence about "these tags:" followed by nothing would confuse the model)."""
    if preset == "hybrid" and template == PRESETS["hybrid"] and not values.tags:
        template = HYBRID_NO_TAGS
    given = {"tags": ", ".join(values.tags), "trigger": values.trigger or "",
             "class": values.class_word or ""}
    filled = PLACEHOLDER.sub(lambda m: given.get(m.group(1), m.group(0)), template)
    return _tidy(filled)


def _tidy(text: str) -> str:
    """Spaces and commas an empty placeholder leaves behind: `a , b` -> `a, b`, `( )` stays."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"[ \t]+", " ", line)
        line = re.sub(r" ([,;.:!?])", r"\1", line)
        line = re.sub(r"([,;])(\s*[,;])+", r"\1", line)
        lines.append(line.strip())
    return "\n".join(lines).strip()


def florence_task(preset: str, prompt: str | None) -> str:
    """Florence-2's task token for this run: the preset's, or the template when it is one."""
    if prompt:
        if prompt.strip() not in FLORENCE_TASKS:
            raise CurateError(f"caption.prompt = {prompt!r}: Florence-2 reads only its task tokens "
                              f"({', '.join(FLORENCE_TASKS)}), not instructions; give one of them, or "
                              "use a preset, or a model that follows instructions (Qwen2.5-VL, "
                              "JoyCaption, SmolVLM)")
        return prompt.strip()
    if preset not in FLORENCE_PRESETS:
        raise CurateError(f"caption preset {preset!r}: unknown; presets: {', '.join(PRESETS)}")
    return FLORENCE_PRESETS[preset]


def florence_note(preset: str, prompt: str | None) -> str | None:
    """What to tell the user once when Florence-2 cannot do what the preset asks."""
    if prompt:
        return None
    if preset == "hybrid":
        return ("Florence-2 reads only task tokens: the hybrid preset runs its <DETAILED_CAPTION> "
                "task and the image's tags cannot be passed as hints (the layout's hybrid format "
                "still adds the tags after the sentence)")
    if preset == "no-names":
        return ("Florence-2 reads only task tokens: the no-names preset runs its <DETAILED_CAPTION> "
                "task, which cannot be told to leave names out (the leak check still runs)")
    return None


def prompt_for(family: str, preset: str, prompt: str | None, values: Values) -> str:
    """The final prompt text a backend gets for one image."""
    if family == FLORENCE:
        return florence_task(preset, prompt)
    return fill(template_of(preset, prompt), values, preset=None if prompt else preset)


def uses_tags(preset: str, prompt: str | None) -> bool:
    """Whether the image's tags go into the prompt (so they are part of the cache key)."""
    return "{tags}" in template_of(preset, prompt)


def hint_tags(names: Sequence[str], trigger: str | None = None, limit: int = 40) -> tuple[str, ...]:
    """Tags as hints: display form, at most `limit` (more only dilutes the instruction). A tag
    holding the trigger word ("sks", "sks cat" from a Kohya folder) is no hint: the word is made
    up, the model would copy it into the sentence, and the compiled caption places it itself."""
    bare = (trigger or "").strip()
    word = re.compile(rf"(?<!\w){re.escape(bare)}(?!\w)", re.IGNORECASE) if bare else None
    out: list[str] = []
    for name in names:
        shown = format_tag(name)
        if shown and shown not in out and not (word and word.search(shown)):
            out.append(shown)
    return tuple(out[:limit])
