"""Sample images during training: sd-scripts' prompt file syntax, when to sample, and images from
the tiny model with a LoRA hooked in (sizes, names, reproducibility, the training RNG untouched)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from curate.errors import CurateError  # noqa: E402
from curate.trainer.model import Models, load_models  # noqa: E402
from curate.trainer.networks import AdapterNetwork, LoRAModule, create_network  # noqa: E402
from curate.trainer.samples import (  # noqa: E402
    SAMPLERS,
    SamplePrompt,
    due,
    generate_samples,
    load_prompts,
    make_scheduler,
    sample_seed,
)

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny_sd: Path) -> Models:
    return load_models(tiny_sd, CPU)


@pytest.fixture()
def network(models: Models) -> Iterator[AdapterNetwork]:
    """A LoRA with nonzero up weights (a fresh one is a no-op), hooked in and in training mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_network("lora", models.unet, [models.text_encoder], dim=4, alpha=4, dropout=0.5)
        for module in net.adapters():
            assert isinstance(module, LoRAModule)
            torch.nn.init.normal_(module.lora_up.weight, std=0.5)
    net.apply_to()
    net.train()
    yield net
    net.remove()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_prompt_file_lines_options_and_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "prompts.txt", "# sample prompts\n\n"
                  "masterpiece, 1girl --n lowres, bad hands --w 100 --h 64 --d 123 --l 5.5 --s 3\n"
                  "   \n"
                  "  a dog on the grass --S 2000 --ss K_Euler_A --g 3.5\n"
                  "plain prompt\n")
    first, second, third = load_prompts(path)
    assert first == SamplePrompt(prompt="masterpiece, 1girl", negative_prompt="lowres, bad hands", width=96,
                                 height=64, seed=123, steps=3, scale=5.5, index=0)
    # steps clamped to 1000 as sd-scripts does; keys are case-blind; --g (Flux) is ignored
    assert (second.prompt, second.steps, second.sampler, second.index) == ("a dog on the grass", 1000,
                                                                           "k_euler_a", 1)
    assert third == SamplePrompt(prompt="plain prompt", index=2)  # 512x512, 30 steps, scale 7.5
    assert (third.width, third.height, third.steps, third.scale, third.seed) == (512, 512, 30, 7.5, None)


def test_small_sizes_round_up_to_64(tmp_path: Path) -> None:
    [sample] = load_prompts(_write(tmp_path / "p.txt", "x --w 20 --h 130\n"))
    assert (sample.width, sample.height) == (64, 128)


@pytest.mark.parametrize(("line", "message"), [
    ("a cat --w wide", "--w 'wide' is not a valid value"),
    ("a cat --l", "option --l has no value"),
    ("a cat --x 3", "unknown option --x"),
    ("a cat --ss turbo", "unknown sampler 'turbo'"),
    ("a cat --d -4", "--d '-4' is not a valid value"),
])
def test_malformed_options_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "prompts.txt", f"# header\nfine prompt --w 512\n{line}\n")
    with pytest.raises(CurateError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        load_prompts(path)


def test_toml_and_json_prompt_files(tmp_path: Path) -> None:
    toml = _write(tmp_path / "prompts.toml", '[prompt]\nwidth = 64\nheight = 64\nsample_steps = 4\n'
                  '[[prompt.subset]]\nprompt = "a cat"\nseed = 1\n'
                  '[[prompt.subset]]\nprompt = "a dog"\nnegative_prompt = "blurry"\nwidth = 128\n')
    cat, dog = load_prompts(toml)
    assert cat == SamplePrompt(prompt="a cat", width=64, height=64, seed=1, steps=4, index=0)
    assert dog == SamplePrompt(prompt="a dog", negative_prompt="blurry", width=128, height=64, steps=4,
                               index=1)
    json_file = _write(tmp_path / "prompts.json", '["a cat --w 64 --s 2", {"prompt": "a dog", "scale": 4}]')
    cat, dog = load_prompts(json_file)
    assert (cat.width, cat.steps, dog.prompt, dog.scale, dog.index) == (64, 2, "a dog", 4.0, 1)
    with pytest.raises(CurateError, match="unknown key 'colour'"):
        load_prompts(_write(tmp_path / "bad.json", '[{"prompt": "x", "colour": "red"}]'))
    with pytest.raises(CurateError, match=r"\[prompt\] table"):
        load_prompts(_write(tmp_path / "bad.toml", 'prompt = "x"\n'))
    with pytest.raises(CurateError, match="cannot read"):
        load_prompts(tmp_path / "missing.txt")


def test_due_follows_sd_scripts() -> None:
    steps = [s for s in range(1, 11) if due(s, False, 1, 4, None)]
    assert steps == [4, 8]
    assert not due(4, True, 1, 4, None)  # the epoch-end call never samples for step-based sampling
    # with every_n_epochs, every_n_steps is ignored and only epoch ends count
    assert [e for e in range(1, 7) if due(e * 10, True, e, 4, 2)] == [2, 4, 6]
    assert not due(8, False, 1, 4, 2)
    assert not due(0, False, 0, 4, None) and due(0, False, 0, 4, None, at_first=True)
    assert not due(5, False, 1, None, None)


def test_every_sampler_maps_to_the_training_schedule() -> None:
    for name in SAMPLERS:
        scheduler = make_scheduler(name, v_parameterization=True)
        config = scheduler.config
        assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
        assert config.prediction_type == "v_prediction"
    assert make_scheduler("dpmsolver", False).config.algorithm_type == "dpmsolver"
    assert make_scheduler("ddim", False).config.clip_sample is True  # as sd-scripts' get_my_scheduler


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_samples_sizes_names_seeds_and_rng(models: Models, network: AdapterNetwork, tmp_path: Path) -> None:
    prompts = [SamplePrompt("a cat", negative_prompt="blurry", width=64, height=64, seed=7, steps=2, index=0),
               SamplePrompt("a dog", width=96, height=64, steps=3, scale=4.0, sampler="euler_a", index=1)]
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    paths = generate_samples(models, prompts, tmp_path, "mylora", 500, None, "ddim", CPU, 42, network=network)
    assert torch.equal(torch.get_rng_state(), before)  # the training run's random stream is untouched
    assert all(p.parent == tmp_path / "sample" for p in paths)
    assert re.fullmatch(r"mylora_000500_00_\d{14}_7\.png", paths[0].name)
    assert re.fullmatch(r"mylora_000500_01_\d{14}\.png", paths[1].name)  # no --d: no seed in the name
    assert [Image.open(p).size for p in paths] == [(64, 64), (96, 64)]
    # modes come back as they were: network training (dropout on), base model in eval
    assert network.training and all(m.training for m in network.adapters())
    assert not models.unet.training

    again = generate_samples(models, prompts, tmp_path / "again", None, 2, 1, "ddim", CPU, 42,
                             network=network)
    assert re.fullmatch(r"e000001_00_\d{14}_7\.png", again[0].name)  # epoch sample, no output name
    for first, second in zip(paths, again, strict=True):  # fixed seeds: the same images
        assert np.array_equal(_pixels(first), _pixels(second))
    other_seed = generate_samples(models, prompts[1:], tmp_path / "seed", "x", 1, None, "ddim", CPU, 43,
                                  network=network)
    assert not np.array_equal(_pixels(paths[1]), _pixels(other_seed[0]))
    assert sample_seed(42, 1) != sample_seed(43, 1)
    assert not list((tmp_path / "sample").glob(".curate-tmp-*"))


def test_samples_see_the_network(models: Models, network: AdapterNetwork, tmp_path: Path) -> None:
    prompt = [SamplePrompt("a cat", width=64, height=64, seed=3, steps=2, index=0)]

    def sample(folder: str, net: AdapterNetwork | None) -> Path:
        [path] = generate_samples(models, prompt, tmp_path / folder, "n", 1, None, "ddim", CPU, 0,
                                  network=net)
        return path

    with_net = sample("on", network)
    network.remove()
    without = sample("off", None)
    network.apply_to()
    back = sample("back", network)
    network.eval()
    evaluated = sample("eval", network)
    network.train()
    assert not np.array_equal(_pixels(with_net), _pixels(without))
    assert np.array_equal(_pixels(with_net), _pixels(back))
    # the fixture's LoRA has dropout 0.5 and is in training mode: sampling turned it off
    assert np.array_equal(_pixels(with_net), _pixels(evaluated))


def test_every_sampler_generates(models: Models, tmp_path: Path) -> None:
    prompts = [SamplePrompt("a cat", width=64, height=64, seed=1, steps=4, sampler=name, index=i)
               for i, name in enumerate(SAMPLERS)]
    paths = generate_samples(models, prompts, tmp_path, "n", 1, None, "ddim", CPU, 0)
    assert len(paths) == len(SAMPLERS)
    for path in paths:
        pixels = _pixels(path)
        assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def test_bad_run_settings_are_refused_before_any_image(models: Models, tmp_path: Path) -> None:
    fine = SamplePrompt("x", width=64, height=64, steps=4)
    with pytest.raises(CurateError, match=r"train\.sample_sampler: unknown sampler 'bogus'"):
        generate_samples(models, [fine], tmp_path, "n", 1, None, "bogus", CPU, 0)
    too_few = SamplePrompt("y", width=64, height=64, steps=3, index=1)
    with pytest.raises(CurateError, match=r"sample prompt 2 .*pndm needs at least 4 steps"):
        generate_samples(models, [fine, too_few], tmp_path, "n", 1, None, "pndm", CPU, 0)
    assert not (tmp_path / "sample").exists()
