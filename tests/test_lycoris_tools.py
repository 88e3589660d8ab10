"""LoHa and LoKr files through the trainer and `curate lora`: a few training steps, `merge` equal to
base + LyCORIS' own dW (our files and files LyCORIS wrote itself, Tucker and decompose_both
included), `info` naming the kind and dims, `export` refusing with what to do instead, and
`curate train --network loha` from the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
lycoris_kohya = pytest.importorskip("lycoris.kohya")

from click.testing import CliRunner  # noqa: E402
from lycoris_helpers import TextModel, randomise, sd_full_preset  # noqa: E402

from curate.cli import cli  # noqa: E402
from curate.errors import CurateError  # noqa: E402
from curate.trainer import loop  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.export import export_ia3_to_lora  # noqa: E402
from curate.trainer.formats import load_network, save_network  # noqa: E402
from curate.trainer.merge import describe, merge_networks  # noqa: E402
from curate.trainer.model import load_models  # noqa: E402
from curate.trainer.networks import create_network  # noqa: E402
from curate.trainer.tools.info import lora_info  # noqa: E402

CPU = torch.device("cpu")
SMALL = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=2, network_dim=4,
                    save_precision="float", seed=1, max_train_steps=3, learning_rate=1e-2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_sd: Path) -> Path:
    return tiny_sd


@pytest.fixture(scope="module")
def dataset(photos_dataset: Path) -> Path:
    return photos_dataset


def ours(model: Path, out: Path, algo: str, seed: int, **options: Any) -> Path:
    models = load_models(model, CPU)
    net = create_network(algo, models.unet, [models.text_encoder], **options)
    randomise(net, seed)
    save_network(out, net.kohya_state_dict(torch.float32), net.metadata())
    return out


def lycoris_written(model: Path, out: Path, algo: str, dim: int, seed: int, monkeypatch: pytest.MonkeyPatch,
                    **args: str) -> Path:
    """A file LyCORIS itself writes (its save_weights), with random weights: forms our trainer does
    not write (Tucker convs, LoKr's decompose_both)."""
    sd_full_preset(monkeypatch)
    models = load_models(model, CPU)
    text = TextModel(models.text_encoder)
    net = lycoris_kohya.create_network(1.0, dim, 2.0, None, text, models.unet, algo=algo, **args)
    net.apply_to(text, models.unet, apply_text_encoder=True, apply_unet=True)
    randomise(net, seed)
    net.save_weights(str(out), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return out


def layer_weights(model: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """LyCORIS module name -> the layer's weight in `model`, for every layer LyCORIS' preset "full"
    adapts (its own name mapping, not ours)."""
    sd_full_preset(monkeypatch)
    models = load_models(model, CPU)
    text = TextModel(models.text_encoder)
    net = lycoris_kohya.create_network(1.0, 1, 1.0, None, text, models.unet, algo="lora")
    return {m.lora_name: m.org_module[0].weight.detach().clone()
            for m in net.unet_loras + net.text_encoder_loras}


def lycoris_delta(raw: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """dW by LyCORIS' own functions from a file's tensors, as its modules' get_weight calls them:
    loha.diff_weight / lokr.kron_weight at the modules' scale alpha / dim (dim: the `_b` factors'
    rows; 1 when both LoKr halves are whole). Not its modules themselves: 4.1.3 reloads a Tucker
    LoKr with the wrong dim and fails, and get_diff_weight multiplies the scale in twice."""
    from lycoris.functional import loha, lokr

    t = {k.removeprefix(name + "."): v.float() for k, v in raw.items() if k.startswith(name + ".")}
    dim = next((t[k].shape[0] for k in ("hada_w1_b", "lokr_w1_b", "lokr_w2_b") if k in t), None)
    scale = float(t["alpha"]) / dim if dim is not None else 1.0
    if "hada_w1_a" in t:
        delta = loha.diff_weight(t["hada_w1_b"], t["hada_w1_a"], t["hada_w2_b"], t["hada_w2_a"],
                                 t.get("hada_t1"), t.get("hada_t2"), gamma=scale)
    else:
        parts = [t.get(f"lokr_{k}") for k in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")]
        delta = lokr.kron_weight(*parts, scale=scale)
    return delta.reshape(shape)


@pytest.mark.parametrize("kind", ["loha-ours", "lokr-ours", "loha-tucker", "lokr-decompose-tucker"])
def test_merge_equals_base_plus_lycoris_delta(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              kind: str) -> None:
    file = tmp_path / f"{kind}.safetensors"
    if kind == "loha-ours":
        ours(model, file, "loha", 1, dim=4, alpha=2, conv_dim=2, conv_alpha=1)
    elif kind == "lokr-ours":
        ours(model, file, "lokr", 2, dim=2, alpha=1, factor=4)
    elif kind == "loha-tucker":
        lycoris_written(model, file, "loha", 4, 3, monkeypatch, use_tucker="True", conv_dim="2",
                        conv_alpha="1")
    else:  # dim 2: 64-wide layers split 8 x 8, so both halves are products (w1 only when dim < 8 / 2)
        lycoris_written(model, file, "lokr", 2, 4, monkeypatch, use_tucker="True", decompose_both="True")
    keys = set(load_network(file)[0])
    if kind != "loha-ours" and kind != "lokr-ours":  # the forms the test means to cover are there
        assert any(k.endswith((".hada_t1", ".lokr_t2")) for k in keys)
    if kind == "lokr-decompose-tucker":
        assert any(k.endswith(".lokr_w1_a") for k in keys)
    result = merge_networks(model, [(file, 0.8)], tmp_path / "merged", save_precision="float")
    raw = load_network(file)[0]
    names = {k.split(".")[0] for k in raw}
    base, merged = layer_weights(model, monkeypatch), layer_weights(tmp_path / "merged", monkeypatch)
    assert names <= base.keys() and len(names) > 100
    worst = max(float((merged[n] - base[n] - 0.8 * lycoris_delta(raw, n, base[n].shape)).abs().max())
                for n in names)
    assert worst < 1e-5, worst
    assert all(torch.equal(merged[n], base[n]) for n in base.keys() - names)  # the rest untouched
    report = result.networks[0]
    algo = kind.split("-")[0]
    assert getattr(report, f"{algo}_layers") == len(names) and report.unknown == []
    assert f"{len(names)} {'LoHa' if algo == 'loha' else 'LoKr'} layers" in describe(result)


def test_merge_refuses_factors_of_another_shape(model: Path, tmp_path: Path) -> None:
    file = ours(model, tmp_path / "loha.safetensors", "loha", 1, dim=2)
    tensors, meta = load_network(file)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors[f"{name}.hada_w1_a"] = torch.zeros(7, 2)
    tensors[f"{name}.hada_w2_a"] = torch.zeros(7, 2)
    save_network(file, tensors, meta)
    with pytest.raises(CurateError, match=f"{name} does not fit the base layer"):
        merge_networks(model, [(file, 1.0)], tmp_path / "merged")


def test_info_names_kind_dims_and_conv_dims(model: Path, tmp_path: Path) -> None:
    info = lora_info(ours(model, tmp_path / "loha.safetensors", "loha", 1, dim=4, alpha=2, conv_dim=2))
    assert info.kind == "LoHa" and info.dims.mode == 4 and info.conv_dims.mode == 2
    assert info.dims.min == info.dims.max == 4 and info.conv_dims.max == 2  # 3x3 convs told apart by name
    assert info.training["network_module"] == "lycoris.kohya"
    assert json.loads(info.training["network_args"])["algo"] == "loha"
    info = lora_info(ours(model, tmp_path / "lokr.safetensors", "lokr", 1, dim=2, conv_dim=3, factor=4))
    assert info.kind == "LoKr" and info.dims.mode == 2 and info.conv_dims.mode == 3


def test_export_refuses_loha_and_lokr(model: Path, tmp_path: Path) -> None:
    for algo in ("loha", "lokr"):
        file = ours(model, tmp_path / f"{algo}.safetensors", algo, 1)
        message = r"(LoHa|LoKr) \(LyCORIS\) file; export turns iA3 into LoRA only"
        with pytest.raises(CurateError, match=message):
            export_ia3_to_lora(file, model, tmp_path / "out.safetensors")
        assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(("algo", "options"), [("loha", {"conv_dim": 2}), ("lokr", {"factor": 4})])
def test_a_few_steps_train_and_lycoris_reads_the_file(model: Path, dataset: Path, tmp_path: Path, algo: str,
                                                      options: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(SMALL, network=algo, **options)  # type: ignore[arg-type]
    run = loop.prepare(dataset, model, config, CPU)
    initial = {k: v.clone() for k, v in run.network.kohya_state_dict(torch.float32).items()}
    result = loop.train(dataset, model, tmp_path, config, device=CPU)
    assert result.steps == 3 and all(math.isfinite(loss) for loss in result.losses)
    tensors, meta = load_network(result.output)
    assert tensors.keys() == initial.keys()
    moved = [k for k in tensors if not k.endswith(".alpha") and not torch.equal(tensors[k], initial[k])]
    zero_start = "hada_w2_a" if algo == "loha" else "lokr_w2_b"
    assert any(k.endswith(zero_start) and bool(tensors[k].any()) for k in moved)  # dW left zero
    assert all(torch.isfinite(v).all() for v in tensors.values())
    assert json.loads(meta["ss_network_args"])["algo"] == algo
    assert meta["ss_network_module"] == "lycoris.kohya"
    sd_full_preset(monkeypatch)
    models = load_models(model, CPU)
    net, _ = lycoris_kohya.create_network_from_weights(1.0, str(result.output), None,
                                                       TextModel(models.text_encoder), models.unet)
    assert len(net.unet_loras) + len(net.text_encoder_loras) == len({k.split(".")[0] for k in tensors})


def test_cli_trains_loha_then_info_merge_export(model: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["train", str(dataset), "--model", str(model), "--out", str(out), "--network", "loha",
            "--max-train-steps", "2", "--json", "--set", "resolution=64", "--set", "min_bucket_reso=64",
            "--set", "batch_size=2", "--set", "network_dim=4", "--set", "network_alpha=2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    trained = Path(json.loads(result.stdout)["output"])
    assert "network = \"loha\"" in (out / "last-config.toml").read_text(encoding="utf-8")
    info = CliRunner().invoke(cli, ["lora", "info", str(trained), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert (data["kind"], data["dims"]["mode"], data["conv_dims"]["mode"]) == ("LoHa", 4, 4)
    merged = CliRunner().invoke(cli, ["lora", "merge", "--base", str(model), str(trained),
                                      "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    assert "LoHa layers" in merged.output and (tmp_path / "merged" / "unet").is_dir()
    export = CliRunner().invoke(cli, ["lora", "export", str(trained), "--model", str(model),
                                      "--out", str(tmp_path / "x.safetensors")])
    assert export.exit_code != 0 and "export turns iA3 into LoRA only" in export.output
    assert "Traceback" not in export.output
