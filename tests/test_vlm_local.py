"""The local transformers caption backend on the tiny random-weight models of fixtures/tiny_vlm.py:
real loading (AutoProcessor + AutoModelForImageTextToText from a folder), real batched generation,
per-family prompts; the text is nonsense, the plumbing is what is tested."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.tagging.vlm import Request, load_local
from fixtures.tiny_vlm import FAMILIES, build_tiny_vlm

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path, quality=90)
        paths.append(path)
    return paths


def prompt_for(family: str) -> str:
    return "short" if family == "florence2" else "Describe this image in one sentence."


def captions(folder: Path, requests: list[Request], **options) -> list:
    captioner = load_local(str(folder), max_new_tokens=8)
    try:
        return list(captioner.caption(requests, **options))
    finally:
        captioner.close()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_captions_photos_greedily(family: str, vlm_models: dict[str, Path],
                                         photos: list[Path]) -> None:
    captioner = load_local(str(vlm_models[family]), max_new_tokens=8)
    assert captioner.family == family
    assert captioner.name == vlm_models[family].name
    assert captioner.settings()["do_sample"] is False and captioner.settings()["dtype"] == "float32"
    requests = [Request(path, prompt_for(family)) for path in photos]
    progress: list[tuple[int, int]] = []
    first = list(captioner.caption(requests, batch_size=2, on_progress=lambda *step: progress.append(step)))
    assert [result.index for result in first] == [0, 1, 2]
    assert all(result.error is None and result.text for result in first), first
    assert progress == [(2, 3), (3, 3)]
    # each photo moves the random model its own way (the fixture is built to), so the images
    # really reach the model and are not mixed up within a batch
    assert len({result.text for result in first}) > 1
    # a re-run, in other batches, gives the same text: greedy decoding, padding that does not leak
    again = list(captioner.caption(requests, batch_size=3))
    assert [r.text for r in again] == [r.text for r in first]
    alone = list(captioner.caption(requests[2:], batch_size=1))
    assert alone[0].text == first[2].text and alone[0].index == 0
    captioner.close()


@pytest.mark.parametrize("family", ["florence2", "qwen2_5_vl"])
def test_broken_image_fails_alone(family: str, vlm_models: dict[str, Path], photos: list[Path],
                                  tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    requests = [Request(photos[0], prompt_for(family)), Request(broken, prompt_for(family)),
                Request(photos[1], prompt_for(family))]
    results = captions(vlm_models[family], requests, batch_size=2)
    clean = captions(vlm_models[family], [requests[0], requests[2]], batch_size=2)
    assert [r.index for r in results] == [0, 1, 2]
    assert results[1].text is None and str(broken) in results[1].error and "\n" not in results[1].error
    assert [results[0].text, results[2].text] == [r.text for r in clean]


def test_florence2_tasks_and_free_prompt(vlm_models: dict[str, Path], photos: list[Path]) -> None:
    captioner = load_local(str(vlm_models["florence2"]), max_new_tokens=8)
    assert captioner.prompt_text("detailed") == "<DETAILED_CAPTION>"
    assert captioner.prompt_text("<MORE_DETAILED_CAPTION>") == "<MORE_DETAILED_CAPTION>"
    by_task = [next(captioner.caption([Request(photos[0], task)])).text for task in ("short", "<CAPTION>")]
    assert by_task[0] == by_task[1]
    with pytest.raises(CurateError, match="Florence-2 takes a task, not a free prompt") as caught:
        list(captioner.caption([Request(photos[0], "Describe the cat.")]))
    assert "\n" not in str(caught.value)


def test_chat_prompt_has_image_and_prompt(vlm_models: dict[str, Path]) -> None:
    qwen = load_local(str(vlm_models["qwen2_vl"]))
    assert qwen.prompt_text("Describe it.").endswith(
        "<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n<|im_start|>assistant\n")
    llava = load_local(str(vlm_models["llava"]))
    assert llava.prompt_text("Describe it.") == "USER: <image>\nDescribe it. ASSISTANT:"


def test_pickle_only_folder_refused(vlm_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(vlm_models["llava"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CurateError, match=r"pickle files only \(pytorch_model.bin\)") as caught:
        load_local(str(folder))
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)


def test_offline_repo_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CurateError) as caught:
        load_local("microsoft/Florence-2-base", cache_dir=tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "microsoft/Florence-2-base" in message and "HF_HUB_OFFLINE" in message
    assert "config.json" in message and "safetensors" in message and "into one folder" in message


def test_revision_follows_the_files(vlm_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(vlm_models["florence2"], folder)
    first = load_local(str(folder)).revision
    assert load_local(str(folder)).revision == first
    (folder / "generation_config.json").write_text('{"max_length": 20}', encoding="utf-8")
    assert load_local(str(folder)).revision != first


def test_fixture_build_is_deterministic(vlm_models: dict[str, Path], tmp_path: Path) -> None:
    again = build_tiny_vlm(tmp_path, "llava")

    def hashes(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    assert hashes(again) == hashes(vlm_models["llava"])
    assert sum(p.stat().st_size for p in again.iterdir()) < 2_000_000


def test_qwen_loads_in_a_fresh_process(vlm_models: dict[str, Path], photos: list[Path]) -> None:
    """Without torchvision, transformers' Qwen2-VL processors need the loader's video stand-in;
    in this session the fixture builder has already set it up, so load in a clean interpreter."""
    script = ("import sys; from pathlib import Path; from curate.tagging.vlm import Request, load_local; "
              "c = load_local(sys.argv[1], max_new_tokens=4); "
              "r = next(c.caption([Request(Path(sys.argv[2]), 'Describe it.')])); "
              "assert r.error is None and r.text, r; print(c.family)")
    done = subprocess.run([sys.executable, "-c", script, str(vlm_models["qwen2_5_vl"]), str(photos[0])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "qwen2_5_vl"


def bare_loop(folder: Path, family: str, ask: str, paths: list[Path], batch_size: int) -> list[str]:
    """A user's own script, loaded on its own: per batch open + convert, processor, greedy
    generate, decode (bench/caption_bench.py times the same loop against the captioner)."""
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from curate.tagging.vlm.local import video_stand_in

    # transformers' Qwen2-VL processors need torchvision for their video half, which CPU test
    # machines lack: the same stand-in as the loader's (captions use images only)
    extra = {"video_processor": video_stand_in(transformers)} if family.startswith("qwen") else {}
    processor = AutoProcessor.from_pretrained(folder, **extra)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    if family == "florence2":
        prompt = ask
    else:
        processor.tokenizer.padding_side = "left"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ask}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    texts = []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(path).convert("RGB") for path in paths[start:start + batch_size]]
        inputs = processor(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=12)
        new = ids if family == "florence2" else ids[:, inputs["input_ids"].shape[1]:]
        texts += [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
    return texts


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_captioner_gives_the_bare_loops_text(family: str, vlm_models: dict[str, Path],
                                             photos: list[Path]) -> None:
    ask = "<DETAILED_CAPTION>" if family == "florence2" else "Describe this image in detail."
    expected = bare_loop(vlm_models[family], family, ask, photos, batch_size=2)
    captioner = load_local(str(vlm_models[family]), max_new_tokens=12)
    try:
        found = list(captioner.caption([Request(path, ask) for path in photos], batch_size=2))
    finally:
        captioner.close()
    assert [result.text for result in found] == expected
    assert len(set(expected)) > 1  # the photos really differ to the model


def test_feeder_gets_a_core_on_cpu(vlm_models: dict[str, Path], photos: list[Path]) -> None:
    """While captioning on the CPU torch runs one thread fewer than the cores, so the feeder
    thread does not push an OpenMP thread off its core; the setting is restored afterwards."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    captioner = load_local(str(vlm_models["llava"]), max_new_tokens=4)
    seen: list[int] = []
    torch.set_num_threads(2)
    try:
        results = list(captioner.caption([Request(path, "Describe it.") for path in photos], batch_size=2,
                                         on_progress=lambda *_: seen.append(torch.get_num_threads())))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert all(result.text for result in results)
    assert seen and set(seen) == {max(1, min(2, cores - 1))}


def test_generation_stops_at_the_last_position(vlm_models: dict[str, Path], photos: list[Path]) -> None:
    """Random weights never say "end": asked for more tokens than Florence-2's learned positions,
    the answer stops at the last one instead of an IndexError ending the run."""
    captioner = load_local(str(vlm_models["florence2"]), max_new_tokens=100_000)
    assert captioner.positions is not None and captioner.positions < 100_000
    [result] = list(captioner.caption([Request(photos[0], "<CAPTION>")]))
    assert result.error is None and result.text is not None
