"""Captions longer than CLIP's 75-token window, exactly as sd-scripts handles `--max_token_length`.

CLIP reads 77 positions: BOS, 75 tokens, EOS. sd-scripts (`strategy_base._get_input_ids`,
`strategy_sd.SdTextEncodingStrategy.encode_tokens`) stretches that to 150 or 225 tokens:

1. The caption is tokenized to `max_token_length + 2` ids (BOS, tokens, EOS, padding).
2. The ids after BOS are cut into windows of 75, each wrapped as `BOS window LAST`, LAST being the
   final id of the long sequence (EOS, or padding for a short caption). Tokenizers whose pad is not
   EOS (SD 2.x's OpenCLIP one pads with "!") get two repairs per window: a window that ends in a
   real token gets EOS as its last id, and a window that starts with padding gets EOS first.
3. All windows of the batch go through the text encoder as one batch of (B*n, 77); clip_skip k
   takes hidden_states[-k] and the final layer norm, per window.
4. The states are stitched back to 1 + 75n + 1 positions: the first window's BOS state, the 75
   middle states of every window, and the last window's final state (227 for 225).

sd-scripts has a v2-only branch meant to patch windows that read `BOS EOS PAD...`, but it compares
a token id to the EOS *string*, which is never equal, so its output is the same concatenation as
for v1; that concatenation is what is reproduced here. With 75 (sd-scripts' `None`) nothing is cut
or stitched: ids are padded to 77 and the states are the text encoder's 77 positions.

SDXL (`strategy_sdxl.SdxlTextEncodingStrategy`) tokenizes the caption for both encoders the same
way and conditions on the penultimate layer of each, without the final layer norm (CLIP-L's
hidden_states[11], OpenCLIP bigG's [-2]; clip_skip does not apply), stitched as above and
concatenated on the feature axis (768 + 1280 = 2048). The pooled embedding is the second
encoder's last_hidden_state at the first EOS of the first window, through its text_projection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

LENGTHS = (75, 150, 225)


def _check_length(max_token_length: int) -> None:
    if max_token_length not in LENGTHS:
        raise ValueError(f"max_token_length must be one of {LENGTHS}, not {max_token_length}")


def _window(ids: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """`BOS ids[start:start+width] LAST`: one 77-id CLIP window out of a long id row."""
    return torch.cat((ids[:1], ids[start:start + width], ids[-1:]))


def _repair_padded_window(chunk: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    # SD 2.x: `... x PAD` would leave the window without an EOS, and `BOS PAD ...` (an empty
    # window) would start with padding; sd-scripts puts an EOS in both places
    if chunk[-2] != eos and chunk[-2] != pad:
        chunk[-1] = eos
    if chunk[1] == pad:
        chunk[1] = eos
    return chunk


def tokenize(tokenizer: Any, captions: list[str], max_token_length: int = 75) -> torch.Tensor:
    """Token ids of shape (B, n, 77): n = max_token_length / 75 CLIP windows per caption."""
    _check_length(max_token_length)
    window = int(tokenizer.model_max_length)
    total = window if max_token_length == window - 2 else max_token_length + 2
    ids = tokenizer(captions, padding="max_length", max_length=total, truncation=True,
                    return_tensors="pt").input_ids
    if total <= window:
        return ids.unsqueeze(1)
    width = window - 2
    v1 = tokenizer.pad_token_id == tokenizer.eos_token_id
    rows = []
    for row in ids:
        chunks = [_window(row, start, width) for start in range(1, total - window + 2, width)]
        if not v1:
            chunks = [_repair_padded_window(c, tokenizer.eos_token_id, tokenizer.pad_token_id)
                      for c in chunks]
        rows.append(torch.stack(chunks))
    return torch.stack(rows)


def _final_layer_norm(text_encoder: nn.Module) -> nn.Module:
    inner = getattr(text_encoder, "text_model", text_encoder)  # transformers <5.6 wraps, later not
    norm: nn.Module = inner.final_layer_norm
    return norm


def _window_states(text_encoder: nn.Module, ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
    """(N, 77, D) states of N windows; clip_skip k takes hidden_states[-k], then the final norm."""
    if clip_skip is None or clip_skip <= 1:  # hidden_states[-1] + final norm is last_hidden_state
        hidden: torch.Tensor = text_encoder(ids).last_hidden_state
        return hidden
    states = text_encoder(ids, output_hidden_states=True).hidden_states
    out: torch.Tensor = _final_layer_norm(text_encoder)(states[-clip_skip])
    return out


def hidden_states(text_encoder: nn.Module, ids: torch.Tensor, clip_skip: int | None = None) -> torch.Tensor:
    """UNet conditioning from (B, n, 77) ids: (B, 77, D) for one window, else (B, 75n + 2, D)."""
    batch, n, window = ids.shape
    states = _window_states(text_encoder, ids.reshape(batch * n, window), clip_skip)
    states = states.reshape(batch, n * window, states.shape[-1])
    if n == 1:
        return states
    parts = [states[:, :1]]  # BOS of the first window
    parts += [states[:, i * window + 1:(i + 1) * window - 1] for i in range(n)]
    parts.append(states[:, -1:])  # EOS (or padding) of the last window
    return torch.cat(parts, dim=1)


def encode_captions(text_encoder: nn.Module, tokenizer: Any, captions: list[str],
                    clip_skip: int | None = None, max_token_length: int = 75) -> torch.Tensor:
    """Tokenize and encode captions on the text encoder's device, as sd-scripts does."""
    device = next(text_encoder.parameters()).device
    ids = tokenize(tokenizer, captions, max_token_length).to(device)
    return hidden_states(text_encoder, ids, clip_skip)


def _pooled(text_encoder: nn.Module, last_hidden: torch.Tensor, ids: torch.Tensor, eos: int) -> torch.Tensor:
    """sd-scripts' `_pool_workaround`: the state at the first EOS (0 when a window has none),
    projected; not transformers' own pooling, which older versions took at the largest id."""
    index = (ids == eos).int().argmax(dim=1).to(last_hidden.device)
    pooled = last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device), index]
    projection: nn.Module = text_encoder.text_projection
    weight: torch.Tensor = projection.weight
    out: torch.Tensor = projection(pooled.to(weight.dtype))
    return out.to(last_hidden.dtype)


def _stitch(states: torch.Tensor, batch: int, n: int, window: int) -> torch.Tensor:
    states = states.reshape(batch, n * window, states.shape[-1])
    if n == 1:
        return states
    middles = [states[:, i * window + 1:(i + 1) * window - 1] for i in range(n)]
    return torch.cat([states[:, :1], *middles, states[:, -1:]], dim=1)


def sdxl_hidden_states(text_encoders: tuple[nn.Module, nn.Module], ids1: torch.Tensor, ids2: torch.Tensor,
                       eos2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (B, 75n + 2, D1 + D2), pooled (B, P)) from (B, n, 77) ids of both tokenizers."""
    batch, n, window = ids1.shape
    te1, te2 = text_encoders
    flat2 = ids2.reshape(batch * n, window)
    states1 = te1(ids1.reshape(batch * n, window), output_hidden_states=True).hidden_states[-2]
    out2 = te2(flat2, output_hidden_states=True)
    pooled = _pooled(te2, out2.last_hidden_state, flat2, eos2)[::n]  # the first window's
    states2 = out2.hidden_states[-2]
    context = torch.cat((_stitch(states1, batch, n, window), _stitch(states2, batch, n, window)), dim=2)
    return context, pooled


def encode_captions_sdxl(text_encoders: tuple[nn.Module, nn.Module], tokenizers: tuple[Any, Any],
                         captions: list[str], max_token_length: int = 75
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's (context, pooled) for captions, on the first text encoder's device."""
    device = next(text_encoders[0].parameters()).device
    ids1 = tokenize(tokenizers[0], captions, max_token_length).to(device)
    ids2 = tokenize(tokenizers[1], captions, max_token_length).to(device)
    return sdxl_hidden_states(text_encoders, ids1, ids2, int(tokenizers[1].eos_token_id))
