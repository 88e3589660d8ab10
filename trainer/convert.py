"""diffusers SD 1.x weights -> one original-layout (LDM/CompVis) checkpoint, the single file A1111,
ComfyUI and civitai users hold.

Single-file checkpoints name their tensors after CompVis' `ldm` modules: `model.diffusion_model.*`
(UNet), `first_stage_model.*` (VAE) and `cond_stage_model.transformer.text_model.*` (CLIP).
diffusers ships only the opposite direction (original -> diffusers) in its single-file loader;
its script `scripts/convert_diffusers_to_original_stable_diffusion.py` goes this way but
hard-codes SD 1.5's four blocks of two layers. This derives the block numbering from the UNet
and VAE configs, so any width and depth converts (the tiny test model too):

- UNet `input_blocks` number every (resnet, attention) pair of every down block, plus one slot
  per down-sampler, after `input_blocks.0` (conv_in); `output_blocks` do the same for the up
  blocks, whose up-sampler sits beside the block's last resnet (index 2 after an attention,
  else 1); `middle_block` is resnet, attention, resnet.
- VAE decoder blocks are numbered in reverse (`up.{N-1-i}`), and the mid attention's q/k/v/out
  linears are stored as 1x1 convolutions with the old names (norm, q, k, v, proj_out).
SD 2.x's OpenCLIP text encoder is stored differently (`cond_stage_model.model.*`) and is not
written here.

SDXL (`sgm_checkpoint`) uses the same UNet numbering (sd-scripts' sdxl_model_util), its added
embedding as `label_emb.0.{0,2}`, and the conditioner's names for the text encoders:
`conditioner.embedders.0.transformer.text_model.*` (CLIP-L, as transformers names it) and
`conditioner.embedders.1.model.*` (OpenCLIP bigG: `transformer.resblocks.N`, q/k/v fused into
`attn.in_proj_*`, `text_projection` stored as the matrix x is multiplied by, i.e. transposed).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

RESNET_NAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                ("conv_shortcut", "skip_connection"))
UNET_TOP = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
            "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
VAE_ATTENTION_NAMES = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                       ("to_out.0.", "proj_out."))


def _resnet(rest: str) -> str:
    for new, old in RESNET_NAMES:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_key(key: str, per_block: int, up_has_attention: list[bool]) -> str:
    for new, old in UNET_TOP.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot = 1 + block * per_block + j
        return f"input_blocks.{slot}.0.{_resnet(rest)}" if kind == "resnets" else \
            f"input_blocks.{slot}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_block}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot = block * per_block + j
        return f"output_blocks.{slot}.0.{_resnet(rest)}" if kind == "resnets" else \
            f"output_blocks.{slot}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        block = int(m[1])
        beside = 2 if up_has_attention[block] else 1  # after (resnet, attention) or (resnet)
        return f"output_blocks.{block * per_block + per_block - 1}.{beside}.{m[2]}"
    raise ValueError(f"no LDM name for UNet key {key}")


def unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel weights under their `model.diffusion_model.` names."""
    per_block = int(config["layers_per_block"]) + 1
    up_attention = ["CrossAttn" in kind for kind in config["up_block_types"]]
    return {"model.diffusion_model." + _unet_key(k, per_block, up_attention): v for k, v in state.items()}


def _vae_key(key: str, blocks: int) -> str:
    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        rest = m[2]
        for new, old in VAE_ATTENTION_NAMES:
            rest = rest.replace(new, old) if rest.startswith(new) else rest
        return f"{m[1]}.mid.attn_1.{rest}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL weights under their `first_stage_model.` names."""
    blocks = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        name = _vae_key(key, blocks)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention projections are 1x1 convolutions
        out["first_stage_model." + name] = value
    return out


def text_encoder_to_ldm(state: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModel weights under SD 1.x's `cond_stage_model.transformer.text_model.` names."""
    # transformers >= 5.6 dropped the `text_model.` level from CLIPTextModel; SD files keep it
    return {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
            for k, v in state.items() if not k.endswith("position_ids")}


def ldm_checkpoint(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module) -> dict[str, Any]:
    """The three SD 1.x components' weights as one original-layout state dict."""
    return {**unet_to_ldm(unet.state_dict(), dict(unet.config)),  # type: ignore[arg-type]
            **vae_to_ldm(vae.state_dict(), dict(vae.config)),  # type: ignore[arg-type]
            **text_encoder_to_ldm(text_encoder.state_dict())}


OPEN_CLIP_NAMES = (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                   ("self_attn.out_proj.", "attn.out_proj."), ("mlp.fc2.", "mlp.c_proj."))


def open_clip_text(state: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextModelWithProjection weights in OpenCLIP's layout (SDXL's second text encoder)."""
    text = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out = {"token_embedding.weight": text.pop("embeddings.token_embedding.weight"),
           "positional_embedding": text.pop("embeddings.position_embedding.weight"),
           "text_projection": text.pop("text_projection.weight").T.contiguous()}
    for key, value in text.items():
        if m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            qkv = [text[f"encoder.layers.{m[1]}.self_attn.{p}_proj.{m[2]}"] for p in "qkv"]
            out[f"transformer.resblocks.{m[1]}.attn.in_proj_{m[2]}"] = _cat(qkv)
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)", key):
            rest = m[2]
            if re.match(r"self_attn\.[kv]_proj\.", rest):
                continue  # fused with q above
            for new, old in OPEN_CLIP_NAMES:
                rest = old + rest[len(new):] if rest.startswith(new) else rest
            out[f"transformer.resblocks.{m[1]}.{rest}"] = value
        else:
            out[key.replace("final_layer_norm.", "ln_final.")] = value
    return out


def _cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts)


def sgm_checkpoint(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module,
                   text_encoder_2: nn.Module) -> dict[str, Any]:
    """The SDXL components' weights as one original-layout (SGM) state dict."""
    state = unet.state_dict()
    added = {k: state.pop(k) for k in list(state) if k.startswith("add_embedding.")}
    out = unet_to_ldm(state, dict(unet.config))  # type: ignore[arg-type]
    out |= {"model.diffusion_model.label_emb.0." + k.removeprefix("add_embedding.").replace("linear_1", "0")
            .replace("linear_2", "2"): v for k, v in added.items()}
    out |= vae_to_ldm(vae.state_dict(), dict(vae.config))  # type: ignore[arg-type]
    out |= {"conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model."): v
            for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    open_clip = open_clip_text(text_encoder_2.state_dict())
    out |= {"conditioner.embedders.1.model." + k: v for k, v in open_clip.items()}
    return out
