"""Training options beyond the basic loop: gradient accumulation and checkpointing, multires
noise, latent caching (RAM and sd-scripts' .npz files), keep-last-N saves, Ctrl-C, NaN, the
adaptive and 8-bit optimisers, mixed precision and v-prediction."""

from __future__ import annotations

import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from curate.errors import CurateError  # noqa: E402
from curate.trainer import loop  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.formats import load_network  # noqa: E402
from curate.trainer.latents import LatentSource, npz_path  # noqa: E402
from curate.trainer.noise import pyramid_noise  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SMALL = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=2, network_dim=4,
                    save_precision="float", seed=3, learning_rate=1e-3)
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_sd: Path) -> Path:
    return tiny_sd


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """Four photos at 96x64 in 1_sks with flip_aug off; a fresh copy per test (caches write into it)."""
    import skimage.data

    folder = tmp_path / "data" / "1_sks"
    folder.mkdir(parents=True)
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        photo.resize((96, 64)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks, {name}", encoding="utf-8")
    return folder.parent


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_network(path)[0]


def _sgd_delta(run: loop.Run, batches: list[list[loop.Item]], config: TrainConfig) -> list[torch.Tensor]:
    """What one train_step moves the weights by under plain SGD(lr=1): minus the gradient it used."""
    params = [p for p in run.network.parameters() if p.requires_grad]
    run.optimizer = torch.optim.SGD(params, lr=1.0)
    run.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
    before = [p.detach().clone() for p in params]
    loop.train_step(run, batches, config, 0)
    return [b - p.detach() for b, p in zip(before, params, strict=True)]


def test_gradient_accumulation_averages_the_batches_gradients(model: Path, dataset: Path) -> None:
    config = replace(SMALL, batch_size=1, gradient_accumulation_steps=2, max_grad_norm=0.0)
    run = loop.prepare(dataset, model, config, CPU)
    batches = loop.epoch_batches(run.dataset, 0, config.seed)[:2]
    expected = []
    for micro, batch in enumerate(batches):  # each batch alone, with the draws train_step gives it
        run.network.zero_grad()
        seed = loop._batch_seed(config.seed, 0, micro, 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(loop.step_seed(config.seed + 1, 0) ^ micro)
            loop._batch_loss(run, batch, config, seed).backward()
        expected.append([p.grad.clone() for p in run.network.parameters() if p.requires_grad])
    run.network.zero_grad()
    delta = _sgd_delta(run, batches, config)
    for got, a, b in zip(delta, *expected, strict=True):
        assert torch.allclose(got, (a + b) / 2, atol=1e-7, rtol=1e-5)
    assert loop.plan_steps(run.dataset, config, run.dist)[0] == 2  # 4 batches of 1, two per step


def test_accumulated_run_resumes_bit_for_bit(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, batch_size=1, gradient_accumulation_steps=2, max_train_steps=4,
                     network_dropout=0.1)
    straight = loop.train(dataset, model, tmp_path / "a", config, device=CPU)
    loop.train(dataset, model, tmp_path / "b", config, device=CPU, stop_after=1)
    resumed = loop.train(dataset, model, tmp_path / "b", config, device=CPU,
                         resume=tmp_path / "b" / "last-step00000001-state")
    assert straight.steps_per_epoch == 2 and resumed.steps == 4
    expected, got = _tensors(straight.output), _tensors(resumed.output)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_gradient_checkpointing_gives_the_same_gradients(model: Path, dataset: Path) -> None:
    config = replace(SMALL, max_grad_norm=0.0)
    plain_run = loop.prepare(dataset, model, config, CPU)
    batch = [loop.epoch_batches(plain_run.dataset, 0, config.seed)[0]]
    plain = _sgd_delta(plain_run, batch, config)
    plain_run.network.remove()
    checked = replace(config, gradient_checkpointing=True)
    checked_run = loop.prepare(dataset, model, checked, CPU)
    assert checked_run.models.unet.is_gradient_checkpointing
    got = _sgd_delta(checked_run, batch, checked)
    assert any(float(d.abs().max()) > 0 for d in got)
    for a, b in zip(plain, got, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_multires_noise_is_seeded_and_unit_variance() -> None:
    base = torch.randn(2, 4, 32, 48, generator=torch.Generator().manual_seed(0))
    first = pyramid_noise(base.clone(), 6, 0.3, torch.Generator().manual_seed(1))
    again = pyramid_noise(base.clone(), 6, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == base.shape
    assert abs(float(first.std()) - 1.0) < 1e-5
    assert not torch.allclose(first, base / base.std())

    # low frequencies were added: neighbouring values correlate, white noise's do not
    def corr(x: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1])
    strong = pyramid_noise(base.clone(), 6, 0.8, torch.Generator().manual_seed(1))
    assert corr(strong) > corr(base) + 0.2


def test_latent_cache_on_disk_is_read_back_and_refreshed(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, cache_latents_to_disk=True, max_train_steps=2)
    first = loop.train(dataset, model, tmp_path / "a", config, device=CPU)
    files = sorted(p.name for p in (dataset / "1_sks").glob("*.npz"))
    assert first.latents_encoded == 4 and files == [f"{n}_0064x0064_sd.npz" for n in sorted(PHOTOS)]
    with np.load(dataset / "1_sks" / "coffee_0064x0064_sd.npz") as npz:  # sd-scripts' keys
        assert npz["latents"].shape[0] == 4 and list(npz["original_size"]) == [96, 64]
        assert {"crop_ltrb", "latents"} <= set(npz.files)
    second = loop.train(dataset, model, tmp_path / "b", config, device=CPU)
    assert second.latents_encoded == 0 and second.losses == first.losses
    image = dataset / "1_sks" / "rocket.png"
    Image.open(image).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(image)  # an edited image
    third = loop.train(dataset, model, tmp_path / "c", config, device=CPU)
    assert third.latents_encoded == 1


def test_ram_cache_feeds_the_encoded_latents(model: Path, dataset: Path) -> None:
    run = loop.prepare(dataset, model, replace(SMALL, cache_latents=True), CPU)
    source = LatentSource(run.models, seed=3)
    assert source.cache(run.dataset) == 4 and not any(dataset.rglob("*.npz"))
    batch = loop.epoch_batches(run.dataset, 0, 3)[0]
    got = source.batch(batch, random.Random(0), torch.Generator())
    stored = torch.stack([source.cached[item.path][0] for item in batch]) * run.models.vae_scale
    assert torch.equal(got, stored)
    assert npz_path(batch[0]).name.endswith("_0064x0064_sd.npz")


def test_keep_last_n_saves_as_sd_scripts(model: Path, dataset: Path, tmp_path: Path) -> None:
    steps = replace(SMALL, max_train_steps=5, save_every_n_steps=1, save_last_n_steps=2, save_state=True)
    loop.train(dataset, model, tmp_path / "s", steps, device=CPU)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "last-config.toml", "last-state", "last-step00000002-state", "last-step00000002.safetensors",
        "last-step00000003-state", "last-step00000003.safetensors", "last-step00000004-state",
        "last-step00000004.safetensors", "last.safetensors"]
    epochs = replace(SMALL, max_train_epochs=4, save_every_n_epochs=1, save_last_n_epochs=2)
    loop.train(dataset, model, tmp_path / "e", epochs, device=CPU)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "last-000002.safetensors", "last-000003.safetensors", "last-config.toml", "last.safetensors"]


def test_ctrl_c_saves_a_state_and_resumes_to_the_same_weights(model: Path, dataset: Path,
                                                               tmp_path: Path) -> None:
    config = replace(SMALL, max_train_steps=4)
    straight = loop.train(dataset, model, tmp_path / "a", config, device=CPU)

    def press_ctrl_c(step: int, _total: int, _loss: float, _info: dict[str, float]) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, through the loop's own handler

    stopped = loop.train(dataset, model, tmp_path / "b", config, device=CPU, on_step=press_ctrl_c)
    assert stopped.interrupted and stopped.steps == 2
    assert stopped.output == tmp_path / "b" / "last-step00000002.safetensors"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = loop.train(dataset, model, tmp_path / "b", config, device=CPU,
                         resume=tmp_path / "b" / "last-step00000002-state")
    expected, got = _tensors(straight.output), _tensors(resumed.output)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_nan_loss_stops_with_the_last_good_weights(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, max_train_steps=20, learning_rate=1e30, max_grad_norm=0.0)
    with pytest.raises(CurateError, match=r"loss became (nan|inf) at step \d+: training stopped") as info:
        loop.train(dataset, model, tmp_path, config, device=CPU)
    saves = sorted(tmp_path.glob("last-step*.safetensors"))
    assert len(saves) == 1 and str(saves[0]) in str(info.value)
    assert all(bool(torch.isfinite(t).all()) for t in _tensors(saves[0]).values())
    assert (tmp_path / f"{saves[0].stem}-state" / "state.json").is_file()


@pytest.mark.parametrize("optimizer", ["dadaptadam", "prodigy"])
def test_adaptive_optimisers_train_and_refuse_split_rates(model: Path, dataset: Path, tmp_path: Path,
                                                          optimizer: str) -> None:
    pytest.importorskip("dadaptation")
    config = replace(SMALL, optimizer=optimizer, learning_rate=1.0, max_train_steps=2)
    result = loop.train(dataset, model, tmp_path, config, device=CPU)
    assert result.steps == 2 and all(np.isfinite(result.losses))
    assert load_network(result.output)[1]["ss_optimizer"].split(".")[-1] in ("DAdaptAdam", "Prodigy")
    with pytest.raises(CurateError, match="one learning rate"):
        loop.train(dataset, model, tmp_path, replace(config, unet_lr=1.0, text_encoder_lr=0.5), device=CPU)


def test_gpu_only_settings_say_so_on_cpu(model: Path, dataset: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs these")
    with pytest.raises(CurateError, match="adamw8bit runs on a CUDA GPU only"):
        loop.train(dataset, model, tmp_path, replace(SMALL, optimizer="adamw8bit"), device=CPU)
    with pytest.raises(CurateError, match="fp16 needs a CUDA GPU"):
        loop.train(dataset, model, tmp_path, replace(SMALL, mixed_precision="fp16"), device=CPU)


def test_bf16_mixed_precision_trains_on_cpu(model: Path, dataset: Path, tmp_path: Path) -> None:
    result = loop.train(dataset, model, tmp_path, replace(SMALL, mixed_precision="bf16", max_train_steps=2),
                        device=CPU)
    assert result.steps == 2 and all(np.isfinite(result.losses))
    assert all(t.dtype == torch.float32 for t in _tensors(result.output).values())  # save_precision float


def test_v_parameterization_setting_changes_the_target(model: Path, dataset: Path) -> None:
    eps = loop.prepare(dataset, model, SMALL, CPU)
    batch = loop.epoch_batches(eps.dataset, 0, 3)[0]
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    captions = [i.caption for i in batch]

    def loss(run: loop.Run) -> float:
        with torch.no_grad():
            return float(loop.diffusion_loss(run.models, latents, captions, torch.ones(2), SMALL,
                                             torch.Generator().manual_seed(5)))
    v = loop.prepare(dataset, model, replace(SMALL, v_parameterization=True), CPU)
    assert v.models.v_parameterization and not eps.models.v_parameterization
    assert loss(v) != loss(eps)


def test_run_writes_samples_and_tensorboard_logs(model: Path, dataset: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\nsks, photo --w 64 --h 64 --s 2 --d 7\n"
                       "sks, cat --n blurry --w 64 --h 64 --s 2\n", encoding="utf-8")
    config = replace(SMALL, max_train_steps=4, sample_prompts=str(prompts), sample_every_n_steps=2,
                     logging_dir=str(tmp_path / "logs"), log_prefix="sks-", output_name="sks")
    result = loop.train(dataset, model, tmp_path / "out", config, device=CPU)
    names = sorted(p.name for p in result.samples)
    assert len(names) == 4 and all(p.parent == tmp_path / "out" / "sample" for p in result.samples)
    assert names[0].startswith("sks_000002_00_") and names[0].endswith("_7.png")
    assert all(Image.open(p).size == (64, 64) for p in result.samples)
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert run_dir.name.startswith("sks-")
    events = EventAccumulator(str(run_dir))
    events.Reload()
    losses = [e.value for e in events.Scalars("loss/current")]
    assert losses == pytest.approx(result.losses, rel=1e-6)
    assert "loss/epoch_average" in events.Tags()["scalars"]


def test_resolved_config_is_saved_and_reads_back(model: Path, dataset: Path, tmp_path: Path) -> None:
    from curate.trainer.config import train_config

    config = replace(SMALL, max_train_steps=1, optimizer_args={"weight_decay": 0.05}, output_name="sks")
    result = loop.train(dataset, model, tmp_path, config, device=CPU)
    written = tmp_path / "sks-config.toml"
    assert written in result.saved and f"dataset: {dataset.absolute()}" in written.read_text(encoding="utf-8")
    assert train_config(written) == config


def test_keep_last_n_with_epoch_and_step_saves_together(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, max_train_steps=6, save_every_n_steps=1, save_last_n_steps=2,
                     save_every_n_epochs=1)
    loop.train(dataset, model, tmp_path, config, device=CPU)  # 2 steps per epoch: epoch saves at 2 and 4
    steps = sorted(p.name for p in tmp_path.glob("last-step*.safetensors"))
    assert steps == ["last-step00000003.safetensors", "last-step00000005.safetensors"]
    assert sorted(p.name for p in tmp_path.glob("last-0*.safetensors")) == [
        "last-000001.safetensors", "last-000002.safetensors"]


def test_v_prediction_loss_factors_follow_sd_scripts_order(model: Path, dataset: Path) -> None:
    """Zero terminal SNR rescales the schedule but the SNR table is the one from before (so
    min-SNR never divides by the zero final SNR); the factors multiply in sd-scripts' order."""
    from curate.trainer.noise import loss_weights

    run = loop.prepare(dataset, model, replace(SMALL, v_parameterization=True, zero_terminal_snr=True), CPU)
    scheduler = run.models.noise_scheduler
    assert float(scheduler.alphas_cumprod[-1]) < 1e-12 < float(scheduler.alphas_cumprod[-2])
    t = torch.tensor([0, 10, 500, 999])
    beta = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - beta, 0)
    snr = (abar / (1 - abar))[t].float()  # the schedule before the rescale
    assert torch.allclose(scheduler.all_snr[t].float(), snr, rtol=1e-4)
    capped = snr.clamp(max=1000)
    config = replace(SMALL, v_parameterization=True, min_snr_gamma=5.0,
                     scale_v_pred_loss_like_noise_pred=True, v_pred_like_loss=0.1,
                     debiased_estimation_loss=True)
    expected = (snr.clamp(max=5.0) / (snr + 1)) * (capped / (capped + 1))
    expected = expected * (1 + 0.1 / (capped / (capped + 1))) / (capped + 1)
    got = loss_weights(run.models, t, config)
    assert got is not None and torch.allclose(got.float(), expected, rtol=1e-4)
    assert loss_weights(run.models, t, SMALL) is None


def test_repeated_resumes_and_the_progress_status(model: Path, dataset: Path, tmp_path: Path) -> None:
    """6 steps straight == 2 + 2 + 2 with two resumes (sd-scripts' counters drift there); each
    step reports the loss and Prodigy's d*lr for the progress bar."""
    from curate.cli.train_cmd import status

    config = replace(SMALL, max_train_steps=6, optimizer="prodigy", learning_rate=1.0, lr_scheduler="cosine")
    infos: list[dict[str, float]] = []
    straight = loop.train(dataset, model, tmp_path / "a", config, device=CPU,
                          on_step=lambda _s, _t, _l, info: infos.append(info))
    out = tmp_path / "b"
    loop.train(dataset, model, out, config, device=CPU, stop_after=2)
    loop.train(dataset, model, out, config, device=CPU, stop_after=4, resume=out / "last-step00000002-state")
    last = loop.train(dataset, model, out, config, device=CPU, resume=out / "last-step00000004-state")
    assert (last.resumed_from, last.steps, last.epochs) == (4, 6, 3)
    expected, got = _tensors(straight.output), _tensors(last.output)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert len(infos) == 6 and any(k.startswith("lr/d*lr") for k in infos[-1])
    assert status(straight.losses[-1], infos[-1]).startswith("loss ") and "d*lr " in status(1.0, infos[-1])


def test_block_learning_rates_train_only_the_chosen_blocks(model: Path, dataset: Path,
                                                           tmp_path: Path) -> None:
    """`block_lr_weights = "IN=0,MID=0,OUT=1"` (a "skin" LoRA: OUT blocks only): IN and MID
    modules keep their initial weights (up stays zero), OUT and text-encoder modules train."""
    import json as _json

    from curate.trainer.blocks import block_of

    config = replace(SMALL, max_train_steps=3, learning_rate=1e-2, block_lr_weights="IN=0,MID=0,OUT=1")
    result = loop.train(dataset, model, tmp_path, config, device=CPU)
    tensors, meta = load_network(result.output)
    ups = {k.split(".")[0]: v for k, v in tensors.items() if k.endswith("lora_up.weight")}
    frozen = [n for n in ups if (block_of(n) or "").startswith(("IN", "M"))]
    trained = [n for n in ups if (block_of(n) or "").startswith("OUT") or n.startswith("lora_te")]
    assert frozen and trained
    assert all(float(ups[n].abs().max()) == 0.0 for n in frozen)
    assert all(float(ups[n].abs().max()) > 0.0 for n in trained)
    assert _json.loads(meta["ss_network_args"])["block_lr_weights"] == "IN=0,MID=0,OUT=1"
    with pytest.raises(CurateError, match="nothing to train"):
        loop.train(dataset, model, tmp_path / "x", replace(config, block_lr_weights="ALL=0",
                                                           train_text_encoder=False), device=CPU)


def test_v_prediction_flags_reach_the_config(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from curate.cli import cli

    (tmp_path / "1_sks").mkdir()
    args = ["train", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "o"),
            "--backend", "kohya", "--print-command", "--v-parameterization", "--zero-terminal-snr",
            "--scale-v-pred-loss"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for flag in ("--v_parameterization", "--zero_terminal_snr", "--scale_v_pred_loss_like_noise_pred"):
        assert flag in result.stdout


def test_an_image_that_no_longer_decodes_stops_with_its_name(model: Path, dataset: Path,
                                                             tmp_path: Path) -> None:
    image = dataset / "1_sks" / "coffee.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # a header that opens, pixels that do not
    with pytest.raises(CurateError, match=r"coffee\.png: cannot decode the image .*curate check"):
        loop.train(dataset, model, tmp_path, replace(SMALL, max_train_steps=2, batch_size=4), device=CPU)
