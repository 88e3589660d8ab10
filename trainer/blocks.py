"""Per-block weights of an SD 1.x / 2.x network, as the "LoRA Block Weight" extension and sd-scripts
write them.

Users name UNet blocks after the original (LDM) layout, one id per slot of the UNet:
`IN00`..`IN11` (input_blocks; IN00 is conv_in, IN03/06/09 the down-samplers), `M00` (the middle
block) and `OUT00`..`OUT11` (output_blocks; the up-samplers sit in OUT02/05/08), plus `BASE` for
the text encoder. A diffusers module `down_blocks.i.{resnets,attentions}.j` is input block
1 + 3i + j, its down-sampler 3(i + 1); `up_blocks.i.{resnets,attentions}.j` is output block 3i + j,
its up-sampler 3i + 2: A1111's diffusers -> CompVis key conversion, which the extension relies on,
and sd-scripts' `get_block_index`, both hard-code SD's three slots per block, so this does too.
UNet layers outside those slots (time embedding, conv_out) have no block and keep weight 1, as in
the extension.

A weight spec (`parse_block_weights`) is a preset name (the extension's defaults), a list of 17
values (LoRA: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03..OUT11; the blocks a LierLa
LoRA has) or 26 values (LyCORIS / LoCon: every block), or named groups `IN=0,MID=0,OUT=1` (also
single ids and ranges such as `IN04-OUT05`; unnamed blocks keep 1). A 17-value list leaves the
other nine blocks at 0, as the extension's `to26` does.

`lr_weights` turns sd-scripts' `down_lr_weight` / `mid_lr_weight` / `up_lr_weight` (or a block
weight spec) into a learning-rate multiplier per kohya module name; weights at or below
`block_lr_zero_threshold` become 0, meaning the module is not trained.

SDXL (`sdxl=True`): its UNet has three levels of the same three slots, so the same numbering
gives `IN00`..`IN08`, `M00`, `OUT00`..`OUT08` plus `BASE` (both text encoders); sd-scripts
already names SDXL modules in that layout (`lora_unet_input_blocks_4_1_...`), which is what
the extension reads. Its specs are 12 values (LoRA: BASE, IN04, IN05, IN07, IN08, M00,
OUT00..OUT05, the blocks with attention) or 20 (LyCORIS: every block), the extension's
BLOCKID12 / BLOCKID20; the extension's default presets are all 17-value SD 1.x lists, so only
the uniform NONE / ALL / ALL0.5 exist for SDXL. sd-scripts' SDXL block learning rates
(networks/lora.py `get_block_index` with is_sdxl, SDXL_NUM_OF_BLOCKS = 9) take 9 down values
(input_blocks 0..8), 3 mid values (middle_block.0 resnet, .1 transformer, .2 resnet) and 9 up
values (output_blocks 0..8).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from curate.errors import CurateError

BLOCKS_PER_SIDE = 12  # sd-scripts' LoRANetwork.NUM_OF_BLOCKS
SDXL_BLOCKS_PER_SIDE, SDXL_MID_BLOCKS = 9, 3  # LoRANetwork.SDXL_NUM_OF_BLOCKS / _MID_BLOCKS
BLOCK_IDS_26 = ["BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12))]
BLOCK_IDS_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
                *(f"OUT{i:02d}" for i in range(3, 12))]
# the extension's BLOCKID20 / BLOCKID12 (SDXL: full, and the blocks with attention)
BLOCK_IDS_20 = ["BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9))]
BLOCK_IDS_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6))]
# the extension's DEF_WEIGHT_PRESET (sd-webui-lora-block-weight, scripts/lora_block_weight.py)
PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}
# the uniform presets are the only ones whose meaning does not depend on SD 1.x's block layout
SDXL_PRESETS: dict[str, str] = {"NONE": ",".join(["0"] * 12), "ALL": ",".join(["1"] * 12),
                                "ALL0.5": ",".join(["0.5"] * 12)}
LR_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")

_DIFFUSERS = re.compile(r"(down|up)_blocks_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_")
_LDM = re.compile(r"(input|output)_blocks_(\d+)_")
_MIDDLE = re.compile(r"middle_block_(\d+)_")
_TEXT = ("lora_te", "text_model", "transformer_resblocks", "cond_stage_model", "conditioner_embedders")


def block_ids(sdxl: bool = False) -> list[str]:
    """Every block id, in the order of the full (26- or 20-value) list."""
    return BLOCK_IDS_20 if sdxl else BLOCK_IDS_26


def lora_block_ids(sdxl: bool = False) -> list[str]:
    """The ids of the short LoRA (LierLa) list: 17 for SD 1.x/2.x, 12 for SDXL."""
    return BLOCK_IDS_12 if sdxl else BLOCK_IDS_17


def block_groups(sdxl: bool = False) -> dict[str, list[str]]:
    ids = block_ids(sdxl)
    return {"ALL": ids, "BASE": ["BASE"], "TE": ["BASE"], "IN": [b for b in ids if b.startswith("IN")],
            "MID": ["M00"], "M00": ["M00"], "OUT": [b for b in ids if b.startswith("OUT")]}


def block_of(name: str) -> str | None:
    """The block id of a kohya module name (`lora_unet_down_blocks_1_attentions_0_...`) or a
    diffusers module path (`down_blocks.1.attentions.0...`); LDM-named keys, as sd-scripts names
    SDXL modules (`lora_unet_input_blocks_4_1_...`, `lora_te1_...`), work too: both layouts number
    three slots per level, so one mapping serves SD 1.x and SDXL. None for a UNet layer outside
    every block (time embedding, SDXL's label_emb, conv_out)."""
    key = name.replace(".", "_") + "_"
    if key.startswith(_TEXT) or any(t in key for t in _TEXT[1:]):
        return "BASE"
    if m := _DIFFUSERS.search(key):
        side, i, kind, j = m[1], int(m[2]), m[3], int(m[4])
        if side == "down":
            return f"IN{3 * (i + 1) if kind == 'downsamplers' else 1 + 3 * i + j:02d}"
        return f"OUT{3 * i + 2 if kind == 'upsamplers' else 3 * i + j:02d}"
    if m := _LDM.search(key):
        return f"{'IN' if m[1] == 'input' else 'OUT'}{int(m[2]):02d}"
    if "mid_block_" in key or "middle_block_" in key:
        return "M00"
    if re.match(r"(lora_unet_)?conv_in_", key):
        return "IN00"
    return None


def _floats(values: list[str], spec: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise CurateError(f"block weights {spec!r}: {values} are not all numbers") from None


def _named(spec: str, sdxl: bool) -> dict[str, float]:
    weights = dict.fromkeys(block_ids(sdxl), 1.0)
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().upper()
        if not sep:
            raise CurateError(f"block weights {spec!r}: {item.strip()!r} is not NAME=VALUE; "
                              "write e.g. IN=0,MID=0,OUT=1")
        (weight,) = _floats([value.strip()], spec)
        for block in _group(key, spec, sdxl):
            weights[block] = weight
    return weights


def _group(key: str, spec: str, sdxl: bool) -> list[str]:
    named, ids = block_groups(sdxl), block_ids(sdxl)
    if key in named:
        return named[key]
    parts = [("M00" if part == "MID" else part) for part in key.split("-")]
    if all(part in ids for part in parts) and len(parts) in (1, 2):
        positions = sorted(ids.index(part) for part in parts)
        return ids[positions[0]:positions[-1] + 1]
    last = "08" if sdxl else "11"
    model = " for SDXL" if sdxl else ""
    raise CurateError(f"block weights {spec!r}: unknown block {key!r}{model}; use BASE, "
                      f"IN, MID, OUT, ALL, an id IN00..IN{last} / M00 / OUT00..OUT{last} or a range like "
                      "IN04-OUT05")


def parse_block_weights(spec: str, *, sdxl: bool = False) -> dict[str, float]:
    """Block id -> weight for every id (26; SDXL: 20), from a preset name, the short LoRA list or
    the full list of values (17 / 26; SDXL: 12 / 20), or NAME=VALUE groups."""
    text, presets = spec.strip(), SDXL_PRESETS if sdxl else PRESETS
    short, full = lora_block_ids(sdxl), block_ids(sdxl)
    counts = f"{len(short)} / {len(full)} values"
    if not text:
        raise CurateError(f"block weights: empty; give a preset ({', '.join(presets)}), {counts}, "
                          "or groups like IN=0,MID=0,OUT=1")
    if text.upper() in presets:
        text = presets[text.upper()]
    elif sdxl and text.upper() in PRESETS:
        raise CurateError(f"block weights {spec!r}: an SD 1.x preset (17 values); SDXL has "
                          f"{', '.join(presets)}, {counts} or groups like IN=0,MID=0,OUT=1")
    if "=" in text:
        return _named(text, sdxl)
    if "," not in text:
        raise CurateError(f"block weights {spec!r}: unknown preset; choose one of {', '.join(presets)}, "
                          f"or give {counts} or groups like IN=0,MID=0,OUT=1")
    values = _floats([v.strip() for v in text.split(",")], spec)
    if len(values) == len(full):
        return dict(zip(full, values, strict=True))
    if len(values) == len(short):
        weights = dict.fromkeys(full, 0.0)  # the extension's to26: unlisted blocks are off
        weights.update(zip(short, values, strict=True))
        return weights
    if sdxl:
        raise CurateError(f"block weights {spec!r}: {len(values)} values; SDXL takes 12 (LoRA: "
                          f"{','.join(BLOCK_IDS_12)}) or 20 (LyCORIS: BASE, IN00-IN08, M00, OUT00-OUT08)")
    raise CurateError(f"block weights {spec!r}: {len(values)} values; SD 1.x/2.x takes 17 (LoRA: "
                      f"{','.join(BLOCK_IDS_17)}) or 26 (LyCORIS: BASE, IN00-IN11, M00, OUT00-OUT11)")


def block_weight(weights: dict[str, float] | None, name: str) -> float:
    """The weight of the module `name` under `weights` (1 without weights or outside every block)."""
    if weights is None:
        return 1.0
    block = block_of(name)
    return 1.0 if block is None else weights[block]


def _lr_list(value: str | None, count: int, what: str, curves: bool = True) -> list[float]:
    """sd-scripts' get_list: a preset name with an optional `+base` (down / up lists only), or
    comma values (blank = 0), padded with 1 when short; too many values are an error here rather
    than silently cut."""
    if value is None:
        return [1.0] * count
    if "," not in value and count > 1 and curves:
        name, _, base_text = value.strip().partition("+")
        base = _floats([base_text], value)[0] if base_text else 0.0
        steps = [i / (count - 1) for i in range(count)]
        curves = {"sine": [math.sin(math.pi * s / 2) for s in steps], "linear": steps,
                  "zeros": [0.0] * count}
        curves["cosine"] = curves["sine"][::-1]
        curves["reverse_linear"] = steps[::-1]
        if name not in curves:
            raise CurateError(f"{what} {value!r}: choose one of {', '.join(LR_PRESETS)} (optionally +NUMBER) "
                              f"or {count} comma-separated values")
        return [w + base for w in curves[name]]
    values = [float(v) if v.strip() else 0.0 for v in _checked(value, what).split(",")]
    if len(values) > count:
        raise CurateError(f"{what} {value!r}: {len(values)} values, at most {count}")
    return values + [1.0] * (count - len(values))


def _checked(value: str, what: str) -> str:
    try:
        [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CurateError(f"{what} {value!r}: not comma-separated numbers") from None
    return value


def lr_weights(names: Iterable[str], *, down_lr_weight: str | None = None, mid_lr_weight: str | None = None,
               up_lr_weight: str | None = None, block_weights: str | None = None,
               zero_threshold: float = 0.0, sdxl: bool = False) -> dict[str, float]:
    """Learning-rate multiplier per kohya module name; 0 means "do not train this module".

    Either sd-scripts' down/mid/up lists (down: IN00..IN11, mid: M00, up: OUT00..OUT11; SDXL:
    IN00..IN08, middle_block.0/.1/.2, OUT00..OUT08; text-encoder modules keep 1, as in sd-scripts)
    or a block weight spec (whose BASE also scales the text encoders); weights not above
    `zero_threshold` become 0, as sd-scripts' block_lr_zero_threshold.
    """
    names = list(names)
    sd_scripts = (down_lr_weight, mid_lr_weight, up_lr_weight) != (None, None, None)
    if sd_scripts and block_weights is not None:
        raise CurateError("block learning rates: give down/mid/up_lr_weight or block_lr_weights, not both")
    if block_weights is None and not sd_scripts:
        return dict.fromkeys(names, 1.0)
    mid: list[float] = []
    if block_weights is not None:
        table = parse_block_weights(block_weights, sdxl=sdxl)
    else:
        side = SDXL_BLOCKS_PER_SIDE if sdxl else BLOCKS_PER_SIDE
        down = _lr_list(down_lr_weight, side, "down_lr_weight")
        mid = _lr_list(mid_lr_weight, SDXL_MID_BLOCKS if sdxl else 1, "mid_lr_weight", curves=False)
        up = _lr_list(up_lr_weight, side, "up_lr_weight")
        table = dict(zip(block_ids(sdxl)[1:], [*down, mid[0], *up], strict=True))
    table = {block: (w if w > zero_threshold else 0.0) for block, w in table.items()}
    table.setdefault("BASE", 1.0)  # sd-scripts' lists leave the text encoder alone
    out = {name: block_weight(table, name) for name in names}
    if len(mid) > 1:  # sd-scripts' SDXL mid list weighs middle_block.0/.1/.2 apart
        for name in names:
            if m := _MIDDLE.search(name.replace(".", "_") + "_"):
                out[name] = mid[int(m[1])] if mid[int(m[1])] > zero_threshold else 0.0
    return out


def weighted_param_groups(network: Any, multipliers: dict[str, float], unet_lr: float | None,
                          te_lr: float | None, default_lr: float) -> list[dict[str, Any]]:
    """Optimizer groups of an AdapterNetwork with per-module learning-rate `multipliers`
    (lr_weights): one group per (side, multiplier), lr = side lr x multiplier, as sd-scripts'
    prepare_optimizer_params groups by block. Modules at 0 are frozen and left out."""
    groups: dict[tuple[str, float], list[Any]] = {}
    for side, names in (("unet", network.unet_names), ("te", network.te_names)):
        for name in names:
            module = network.get_submodule(name)
            weight = multipliers.get(name, 1.0)
            if weight == 0:
                module.requires_grad_(False)
                continue
            groups.setdefault((side, weight), []).extend(module.parameters())
    out = []
    for (side, weight), params in groups.items():
        lr = unet_lr if side == "unet" else te_lr
        out.append({"params": params, "lr": (default_lr if lr is None else lr) * weight})
    return out


def block_contents(block: str, sdxl: bool = False) -> str:
    """What a block holds, in diffusers module names (for `curate lora blocks`): SD 1.x's four
    levels (the last down / first up level without attention), or SDXL's three (the first down /
    last up level without attention, no sampler past the middle)."""
    if block == "BASE":
        return "text encoders (te1, te2)" if sdxl else "text encoder"
    if block == "M00":
        return "mid_block"
    levels, plain_down, plain_up = (3, 0, 2) if sdxl else (4, 3, 0)
    side, n = block[:-2], int(block[-2:])
    if side == "IN":
        if n == 0:
            return "conv_in"
        i, j = divmod(n - 1, 3)
        if j == 2:
            return f"down_blocks.{i}.downsamplers.0"
        names = [f"down_blocks.{i}.resnets.{j}"]
        names += [] if i == plain_down else [f"down_blocks.{i}.attentions.{j}"]
    else:
        i, j = divmod(n, 3)
        names = [f"up_blocks.{i}.resnets.{j}"] + ([] if i == plain_up else [f"up_blocks.{i}.attentions.{j}"])
        names += [f"up_blocks.{i}.upsamplers.0"] if j == 2 and i < levels - 1 else []
    return " + ".join(names)


def block_table(spec: str | None = None, *, sdxl: bool = False) -> list[tuple[str, str, bool, float | None]]:
    """(block id, contents, in the short LoRA list (17; SDXL 12), weight under `spec` or None) per block."""
    weights = parse_block_weights(spec, sdxl=sdxl) if spec is not None else None
    short = lora_block_ids(sdxl)
    return [(block, block_contents(block, sdxl), block in short, None if weights is None else weights[block])
            for block in block_ids(sdxl)]
