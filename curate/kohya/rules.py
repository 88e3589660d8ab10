"""Facts of sd-scripts' dataset format that import, `curate check`, `curate buckets` and the
trainer all follow: how a folder name, an image name and a caption file are read.

Each function restates one piece of kohya-ss/sd-scripts (commit 48d368f) in our own words;
`tests/data/extract_sd_scripts_dataset.py` runs sd-scripts' own functions on a table of
cases (`tests/data/sd_scripts_dataset.json`) and tests/test_check_sdscripts.py checks that
these agree with it:

- `parse_folder_name`: `config_util.generate_dreambooth_subsets_config_by_subdirs`'s
  `extract_dreambooth_params`: `name.split("_")`, `int()` of the first field (so `10`, `10_`
  and ` 5_x` are read: int() takes surrounding blanks and any Unicode digits), the other fields
  joined by `_` are the class tokens; a ValueError or repeats < 1 skips the folder;
- `sd_image`: `train_util.glob_images`: `glob("*" + ext)` for each of IMAGE_EXTENSIONS, which
  lists each extension all-lower and ALL-UPPER (so `.Jpg` is never read) and adds `.avif` /
  `.jxl` only when their Pillow plugins import; glob skips hidden names;
- `caption_extension`: `DreamBoothSubset` adds a missing leading dot (`"txt"` reads `.txt`);
- `caption_names`: `read_caption` tries `stem + ext`, then, for a name of five or more
  `_`-fields (a face-crop tool's `name_x_y_w_h.jpg`), the part before the last four fields;
- `caption_text`: `read_caption`: UTF-8 text read with universal newlines; an empty file is an
  assertion error; the first line stripped, or with `enable_wildcard` every non-blank line
  (stripped), joined by newlines: one of them is picked at each step.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from curate.paths import display, is_inside, read_regular, special_file_reason

# sd-scripts' IMAGE_EXTENSIONS: these, all-lower or ALL-UPPER.
SD_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Read by sd-scripts only when one of these modules imports (train_util.py's try/import).
PLUGIN_IMAGE_EXTS = {".avif": ("pillow_avif",), ".jxl": ("jxlpy", "pillow_jxl")}
# Caption files larger than this are not read by check or train. sd-scripts reads any size,
# but a caption is the text of one prompt (CLIP reads 75-225 tokens); a megabyte is thousands
# of times that, and reading such files made check quadratic and metadata huge.
CAPTION_LIMIT = 1 << 20


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """`10_sks dog` -> (10, "sks dog"); None when sd-scripts skips the folder."""
    fields = name.split("_")
    try:
        repeats = int(fields[0])
    except ValueError:
        return None
    if repeats < 1:
        return None
    return repeats, "_".join(fields[1:])


def plugin_note(ext: str) -> str:
    """Which package sd-scripts needs for an extension of PLUGIN_IMAGE_EXTS."""
    return " or ".join(n.replace("_", "-") + ("-plugin" if n.startswith("pillow") else "")
                       for n in PLUGIN_IMAGE_EXTS[ext.lower()])


@cache
def readable_plugin_exts() -> frozenset[str]:
    """Of PLUGIN_IMAGE_EXTS, those this Python can decode: Pillow's own AVIF support (11.3+)
    or an installed plugin (importing it registers it with Pillow)."""
    found = set()
    for ext, modules in PLUGIN_IMAGE_EXTS.items():
        for module in modules:
            if importlib.util.find_spec(module) is not None:
                try:
                    importlib.import_module(module)
                except Exception:  # a broken plugin reads nothing; Pillow alone may still
                    continue
                found.add(ext)
    try:
        from PIL import features

        if features.check("avif"):
            found.add(".avif")
    except Exception:  # an old Pillow without the feature name: plugins only
        pass
    return frozenset(found)


def sd_image(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether sd-scripts' glob takes this file name (`extra`: plugin extensions it has)."""
    if name.startswith("."):
        return False
    exts = (*SD_IMAGE_EXTS, *extra)
    return any(name.endswith(e) or name.endswith(e.upper()) for e in exts)


def caption_extension(ext: str) -> str:
    return ext if not ext or ext.startswith(".") else "." + ext


def caption_names(image_name: str, ext: str) -> list[str]:
    """The caption file names read_caption tries for an image, in order.

    sd-scripts splits the whole path string it was given, so with `_` in folder names the
    face-crop name can land in another folder; only the image's own name is split here (a
    caption outside the image folder is never what a dataset means)."""
    stem = os.path.splitext(image_name)[0]
    fields = stem.split("_")
    names = [stem + ext]
    if len(fields) >= 5:
        names.append("_".join(fields[:-4]) + ext)
    return list(dict.fromkeys(names))


def caption_lines(text: str) -> list[str]:
    """The lines `open(...).readlines()` gives: universal newlines (\\n, \\r, \\r\\n) only, not
    the other separators str.splitlines() knows (\\x0c, \\x1c, U+2028...)."""
    return io.StringIO(text, newline=None).readlines()


def caption_text(text: str, enable_wildcard: bool = False) -> str | None:
    """The caption sd-scripts takes from a file's text; None for an empty file (it asserts)."""
    lines = caption_lines(text)
    if not lines:
        return None
    if enable_wildcard:
        return "\n".join(line.strip() for line in lines if line.strip() != "")
    return lines[0].strip()


def unsafe_caption_reason(path: Path, roots: Sequence[Path]) -> str | None:
    """Why a caption file is not read, or None when it may be.

    The rule (check and train): a symlinked caption is read only when it resolves inside one
    of `roots` (the dataset, the subset's image folder). Caption text is printed by check (in CI
    logs and pull-request annotations) and stored by train in ss_tag_frequency, and a cloned
    dataset repository decides its own symlinks: `a.txt -> ~/.ssh/id_rsa` would publish the key.
    Image symlinks are followed to any regular file: their pixels are decoded, never printed or
    stored as text, and `curate layout --link symlink` points them out of the dataset.
    """
    if os.path.islink(path) and not any(is_inside(root, path) for root in roots):
        return (f"is a symlink to {display(os.path.realpath(path))}, outside the dataset: not read "
                "(a cloned dataset could point it at any of your files); copy the caption in")
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    reason = special_file_reason(st.st_mode)
    if reason is not None or not os.path.isfile(path):
        return f"is {reason}" if reason else "is a folder, not a caption file"
    if st.st_size > CAPTION_LIMIT:
        return (f"is {st.st_size / (1 << 20):.1f} MiB, over the {CAPTION_LIMIT >> 20} MiB caption limit: "
                "not read (a caption is one prompt of tags)")
    return None


def read_caption_bytes(path: Path, roots: Sequence[Path]) -> bytes | str:
    """The caption file's bytes, or the one-line reason it is not read (see unsafe_caption_reason)."""
    reason = unsafe_caption_reason(path, roots)
    if reason is not None:
        return reason
    try:
        data = read_regular(path, CAPTION_LIMIT)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(data) > CAPTION_LIMIT:  # grew since the stat
        return f"is over the {CAPTION_LIMIT >> 20} MiB caption limit: not read"
    return data
