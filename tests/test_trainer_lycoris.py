"""LoHa and LoKr against LyCORIS itself (PyPI lycoris-lora, a dev dependency): the same modules as
its kohya wrapper adapts, files its own loader reads back to the same outputs, merges equal to
base + its own dW, and training, info, merge and export from the trainer and the CLI.

LyCORIS gets the text encoder nested as sd-scripts hands it over (lycoris_helpers.TextModel).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
lycoris_kohya = pytest.importorskip("lycoris.kohya")

from lycoris_helpers import TextModel, randomise, sd_full_preset  # noqa: E402
from trainer_helpers import unet_and_text_outputs  # noqa: E402

from curate.trainer.formats import save_network  # noqa: E402
from curate.trainer.networks import LycorisModule, create_network  # noqa: E402
from fixtures.tiny_sd import build_components  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# (algo, our options, the same as LyCORIS network_args); dim/alpha go to LyCORIS as network_dim/alpha
CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("loha", {"dim": 4, "alpha": 2}, {}),
    ("loha", {"dim": 4, "alpha": 2, "conv_dim": 2, "conv_alpha": 1}, {"conv_dim": "2", "conv_alpha": "1"}),
    ("lokr", {"dim": 4, "alpha": 2}, {}),  # the tiny layers are small: w2 whole in full-matrix mode
    ("lokr", {"dim": 2, "alpha": 1, "factor": 4}, {"factor": "4"}),  # w2 as w2_a @ w2_b
]
IDS = ["loha", "loha-conv", "lokr-full", "lokr-factor"]


@pytest.fixture()
def tiny() -> dict[str, Any]:
    return build_components()


@pytest.fixture()
def lycoris_full(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    sd_full_preset(monkeypatch)
    yield


def _lycoris_modules(net: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {m.lora_name: m.state_dict() for m in net.unet_loras + net.text_encoder_loras}


@pytest.mark.usefixtures("lycoris_full")
@pytest.mark.parametrize(("algo", "options", "args"), CASES, ids=IDS)
def test_same_modules_shapes_and_alphas_as_lycoris(tiny: dict[str, Any], algo: str, options: dict[str, Any],
                                                   args: dict[str, str]) -> None:
    ours = create_network(algo, tiny["unet"], [tiny["text_encoder"]], **options)
    theirs = lycoris_kohya.create_network(1.0, options["dim"], options["alpha"], None,
                                          TextModel(tiny["text_encoder"]), tiny["unet"], algo=algo, **args)
    expected = {f"{name}.{key}": value for name, state in _lycoris_modules(theirs).items()
                for key, value in state.items()}
    got = ours.state_dict()
    assert got.keys() == expected.keys()
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    alphas = [k for k in got if k.endswith(".alpha")]
    assert [float(got[k]) for k in alphas] == [float(expected[k]) for k in alphas]
    # SD's every kind of layer: attention, ResNet 3x3 and shortcut, samplers, conv_in/out, time embedding
    for name in ("lora_unet_conv_in", "lora_unet_time_embedding_linear_2",
                 "lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_0_downsamplers_0_conv",
                 "lora_te_text_model_encoder_layers_1_mlp_fc2"):
        assert name in ours.unet_names + ours.te_names
    assert all(isinstance(m, LycorisModule) for m in ours.adapters())


@pytest.mark.usefixtures("lycoris_full")
@pytest.mark.parametrize(("algo", "options", "args"), CASES, ids=IDS)
def test_lycoris_loads_our_file_to_the_same_outputs(tiny: dict[str, Any], tmp_path: Path, algo: str,
                                                    options: dict[str, Any], args: dict[str, str]) -> None:
    unet, encoder = tiny["unet"], tiny["text_encoder"]
    text = TextModel(encoder)
    base = unet_and_text_outputs(unet, text)
    ours = create_network(algo, unet, [encoder], **options)
    randomise(ours)
    ours.set_multiplier(0.7)
    ours.apply_to()
    ours.eval()
    expected = unet_and_text_outputs(unet, text)
    ours.remove()
    assert not torch.allclose(expected[1], base[1], atol=1e-3)  # the network changes the output
    path = save_network(tmp_path / "net.safetensors", ours.kohya_state_dict(torch.float32), ours.metadata())
    assert path is not None
    theirs, weights = lycoris_kohya.create_network_from_weights(0.7, str(tmp_path / "net.safetensors"), None,
                                                                text, unet)
    theirs.apply_to(text, unet, apply_text_encoder=True, apply_unet=True)
    result = theirs.load_state_dict(weights, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    assert len(theirs.unet_loras) == len(ours.unet_names)
    assert len(theirs.text_encoder_loras) == len(ours.te_names)
    theirs.eval()
    got = unet_and_text_outputs(unet, text)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_lokr_factor_and_full_matrix_rules(tiny: dict[str, Any]) -> None:
    """A 64-wide linear: factor -1 splits 64 as 8 x 8; dim 2 < 8/2 factors w2, dim 4 stores it whole
    (and then scale 1, alpha = dim); factor 4 splits 64 as 4 x 16."""
    from curate.trainer.networks.lokr import factorization

    assert [factorization(n) for n in (64, 320, 127, 1024)] == [(8, 8), (16, 20), (1, 127), (32, 32)]
    assert factorization(128, 4) == (4, 32) and factorization(360, 8) == (8, 45)
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    table: list[tuple[dict[str, Any], dict[str, tuple[int, ...]], float]] = [
        ({"dim": 2, "alpha": 1}, {"lokr_w1": (8, 8), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 8)}, 1.0),
        ({"dim": 4, "alpha": 1}, {"lokr_w1": (8, 8), "lokr_w2": (8, 8)}, 4.0),
        ({"dim": 4, "alpha": 1, "factor": 4},
         {"lokr_w1": (4, 4), "lokr_w2_a": (16, 4), "lokr_w2_b": (4, 16)}, 1.0),
    ]
    for options, keys, alpha in table:
        state = create_network("lokr", tiny["unet"], [], train_text_encoder=False, **options).state_dict()
        got = {k.split(".")[1]: tuple(v.shape) for k, v in state.items() if k.startswith(name + ".")}
        assert got == {**keys, "alpha": ()} and float(state[f"{name}.alpha"]) == alpha


def test_starts_as_identity_and_metadata(tiny: dict[str, Any]) -> None:
    text = TextModel(tiny["text_encoder"])
    base = unet_and_text_outputs(tiny["unet"], text)
    for algo, args in (("loha", {"algo": "loha", "conv_dim": "8", "conv_alpha": "1.0"}),
                       ("lokr", {"algo": "lokr", "conv_dim": "8", "conv_alpha": "1.0", "factor": "4"})):
        options = {"factor": 4} if algo == "lokr" else {}
        net = create_network(algo, tiny["unet"], [tiny["text_encoder"]], **options)
        net.apply_to()
        assert torch.equal(unet_and_text_outputs(tiny["unet"], text)[1], base[1])  # one factor starts at zero
        net.remove()
        meta = net.metadata()
        assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"]) == args
        assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("8", "1.0")


def test_refusals() -> None:
    from curate.errors import CurateError
    from curate.trainer.config import TrainConfig

    with pytest.raises(ValueError, match="factor"):
        create_network("lokr", None, [], factor=0)
    with pytest.raises(ValueError, match="valid: "):
        create_network("loha", None, [], factor=4)  # LoHa has no factor
    for options, message in (({"network": "loha", "network_dropout": 0.1}, "no neuron dropout"),
                             ({"network": "lokr", "scale_weight_norms": 1.0}, "LoRA weight norms only"),
                             ({"network": "loha", "factor": 4}, "lokr only"),
                             ({"network": "lokr", "factor": 0}, "factor = 0")):
        with pytest.raises(CurateError, match=message):
            TrainConfig(**options).check()  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "network_args"), [
    ({"network": "loha", "network_dim": 8, "network_alpha": 4.0},
     ["algo=loha", "conv_dim=8", "conv_alpha=4"]),
    ({"network": "lokr", "network_dim": 16, "conv_dim": 4, "conv_alpha": 1.0, "factor": 8},
     ["algo=lokr", "conv_dim=4", "conv_alpha=1", "factor=8"]),
])
def test_kohya_backend_passes_them_to_lycoris(tmp_path: Path, options: dict[str, Any],
                                              network_args: list[str]) -> None:
    """--backend kohya: sd-scripts' own parser reads the command; LyCORIS gets the conv settings the
    builtin trainer reads (an unset conv_dim is network_dim in both)."""
    from dataclasses import replace

    from backend_helpers import fake_model, folder_dataset, sd_args

    from curate.trainer.backends import kohya
    from curate.trainer.config import TrainConfig

    config = replace(TrainConfig(resolution=64, min_bucket_reso=64), **options)
    dataset, model = folder_dataset(tmp_path / "ds"), fake_model(tmp_path / "model")
    plan = kohya.plan(dataset, model, tmp_path / "out", config)
    args = sd_args(plan.command or [])
    assert args.network_module == "lycoris.kohya" and args.network_args == network_args
    assert args.network_dim == options["network_dim"]
    assert args.network_alpha == options.get("network_alpha", 1.0)
    assert any("lycoris_lora" in note for note in plan.notes)
