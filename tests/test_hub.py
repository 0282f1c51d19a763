"""Model cards and the Hub: the card parses with huggingface_hub and carries the metadata and the sweep grid; pushing
and loading go end to end through huggingface_hub against a local stand-in Hub (tests/hub_server.py)."""

from __future__ import annotations

import ast
import os
import shutil
import socket

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file

from peft_slider import SliderLoraConfig
from peft_slider.formats.hub import (
    HubError,
    build_model_card,
    push_slider_to_hub,
    slider_files_to_upload,
    write_model_card,
)
from peft_slider.formats.loading import load_slider
from peft_slider.formats.metadata import SliderMetadata, read_safetensors_header
from peft_slider.formats.writers import save_slider
from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, capture_denoiser_inputs, tiny_call_kwargs
from tests.hub_server import StandInHub

TOKEN = "hf_stand_in_write_token"


def _metadata() -> SliderMetadata:
    return SliderMetadata(
        concept="smiling",
        base_model="tiny/sd15",
        architecture="sd15",
        scope="visual",
        trained_strengths=(-1, 1),
        recommended_range=(-2.5, 3),
        slider_start=0.25,
        rank=4,
        alpha=6,
    )


@pytest.fixture(scope="module")
def slider_folder(tmp_path_factory):
    """A saved SD 1.x slider with its card and sweep grid, and the pipeline it was trained on."""
    folder = tmp_path_factory.mktemp("slider")
    pipe = build_tiny_pipeline("sd15")
    pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=6, model=pipe.unet, init_lora_weights=False), "smile")
    save_slider(pipe, folder, adapter_name="smile", comfyui=True, metadata=_metadata())
    grid = tmp_path_factory.mktemp("render") / "sweep.png"
    Image.new("RGB", (96, 32), color=(200, 120, 40)).save(grid)
    write_model_card(folder, _metadata(), grid_image=grid, repo_id="me/smile-slider", license="creativeml-openrail-m")
    return folder, pipe


@pytest.fixture
def hub(monkeypatch, tmp_path):
    # The stand-in speaks the legacy LFS protocol, which huggingface_hub uses when Xet is off; downloads go to a
    # private cache.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with StandInHub(tokens={TOKEN}) as server:
        yield server


def test_model_card_parses_and_carries_the_metadata(slider_folder):
    folder, _ = slider_folder
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "tiny/sd15"
    assert data["library_name"] == "diffusers"
    assert data["license"] == "creativeml-openrail-m"
    assert {"lora", "slider", "stable-diffusion"} <= set(data["tags"])
    assert data["peft_slider"] == _metadata().to_dict()
    assert SliderMetadata(**{**data["peft_slider"]}) == _metadata()
    assert "-2.5 to 3" in card.text and "25% of the denoising steps" in card.text
    assert "![strength sweep](sweep.png)" in card.text and (folder / "sweep.png").is_file()
    assert "smiling_comfyui.safetensors" in card.text and (folder / "smiling_comfyui.safetensors").is_file()
    assert "pipe.load_lora_weights('me/smile-slider', adapter_name='slider')" in card.text


def test_model_card_usage_code_runs(slider_folder, monkeypatch):
    """The card's diffusers snippet, with the tiny pipeline and the local folder in place of the Hub ids."""
    folder, _ = slider_folder
    text = ModelCard.load(folder / "README.md").text
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("DiffusionPipeline.from_pretrained('tiny/sd15', torch_dtype=torch.bfloat16)", "build()")
    code = code.replace("'me/smile-slider'", repr(str(folder)))
    code = code.replace(")).images[0]", "), **call_kwargs).images[0]")
    namespace = {"build": lambda: build_tiny_pipeline("sd15"), "call_kwargs": tiny_call_kwargs("sd15")}
    exec(compile(code, "model card usage", "exec"), namespace)
    assert namespace["image"].shape == (3, 32, 32)


@pytest.mark.parametrize(
    "architecture, tag, pipeline_tag",
    [
        ("sdxl", "stable-diffusion", "text-to-image"),  # the row's hub_tag: SD 1.x, 2.x and SDXL share the class
        ("flux", "flux", "text-to-image"),  # no hub_tag: the first alias
        ("wan", "wan", "text-to-video"),  # the row's `video`
        ("ltx", "ltx", "text-to-video"),
        (None, None, "text-to-image"),
    ],
)
def test_model_card_tags_come_from_the_architecture_table(architecture, tag, pipeline_tag):
    card = build_model_card(SliderMetadata(concept="age", architecture=architecture))
    assert card.data.pipeline_tag == pipeline_tag
    assert card.data.tags[-1] == (tag or "diffusers")


def test_model_card_input_errors(tmp_path):
    with pytest.raises(TypeError, match="`metadata` must be a SliderMetadata"):
        build_model_card({"concept": "x"})
    with pytest.raises(ValueError, match="`repo_id` must look like 'owner/name'"):
        build_model_card(_metadata(), repo_id="not a repo")
    with pytest.raises(ValueError, match="`grid_image` .* does not exist"):
        write_model_card(tmp_path, _metadata(), grid_image=tmp_path / "missing.png")


def test_push_uploads_the_folder_and_load_slider_reads_it_back(slider_folder, hub, tmp_path):
    folder, source = slider_folder
    url = push_slider_to_hub(folder, "me/smile-slider", token=TOKEN, endpoint=hub.url, private=True)
    repo = hub.state.repos["me/smile-slider"]
    assert url.startswith(f"{hub.url}/me/smile-slider/commit/")
    assert repo.private
    local = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    assert repo.files == local
    # Weights and image went through the LFS endpoints, like on the Hub.
    assert ("POST", "/me/smile-slider.git/info/lfs/objects/batch") in hub.state.requests
    assert len(hub.state.lfs_objects) == 4  # two weight files, the ComfyUI file, the grid

    # Pushing again (repo exists) is fine.
    push_slider_to_hub(folder, "me/smile-slider", token=TOKEN, endpoint=hub.url)
    assert len(repo.commits) == 2

    # Loading by repo id goes through list_repo_files + hf_hub_download.
    pipe = build_tiny_pipeline("sd15")
    inputs = capture_denoiser_inputs(
        pipe, "a face", generator=torch.Generator().manual_seed(0), **tiny_call_kwargs("sd15")
    )
    load_slider(pipe, "me/smile-slider", adapter_name="smile", strength=2.0, token=TOKEN, endpoint=hub.url)
    source.unet.set_adapters(["smile"], weights=[2.0])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(**inputs)[0], source.unet(**inputs)[0], atol=1e-5, rtol=1e-5)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_push_errors_say_what_to_do(slider_folder, hub, monkeypatch):
    folder, _ = slider_folder
    with pytest.raises(HubError, match=r"not logged in .* run `hf auth login` or pass token="):
        push_slider_to_hub(folder, "me/x", token="hf_wrong", endpoint=hub.url)
    with pytest.raises(HubError, match="not logged in"):
        push_slider_to_hub(folder, "me/x", token=False, endpoint=hub.url)
    offline = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(HubError, match=f"the Hub at {offline} could not be reached"):
        push_slider_to_hub(folder, "me/x", token=TOKEN, endpoint=offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push_slider_to_hub(folder, "me/x", token=TOKEN, endpoint=hub.url)
    assert "me/x" not in hub.state.repos


def test_push_input_errors(tmp_path):
    with pytest.raises(ValueError, match="`repo_id` must look like 'owner/name'"):
        push_slider_to_hub(tmp_path, "a/b/c")
    with pytest.raises(ValueError, match="must be a folder holding a saved slider"):
        push_slider_to_hub(tmp_path, "me/empty")
    with pytest.raises(ValueError, match="must be a folder holding a saved slider; it does not exist"):
        push_slider_to_hub(tmp_path / "missing", "me/empty")


def test_stand_in_hub_refuses_what_the_hub_refuses(hub):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("me/a")
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as error:
        api.create_repo("me/a")
    assert error.value.response.status_code == 409
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):
        api.list_repo_files("me/missing")


def test_model_card_reads_the_metadata_from_the_saved_slider(slider_folder, tmp_path):
    folder, _ = slider_folder
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(
        (folder / "pytorch_lora_weights.safetensors").read_bytes()
    )
    card = ModelCard.load(write_model_card(tmp_path, repo_id="me/s"))
    assert card.data.peft_slider["architecture"] == "UNet2DConditionModel"
    assert (card.data.peft_slider["rank"], card.data.peft_slider["alpha"]) == (4, 6.0)
    assert "![strength sweep]" not in card.text  # no grid given, none referenced


def test_model_card_reads_only_the_header(slider_folder, tmp_path):
    # Regression: the card loaded and checked every tensor (read_slider) only to get the metadata, so a weights file
    # peft_slider does not read as a slider (here a DoRA magnitude beside the LoRA matrices) had no card.
    folder, _ = slider_folder
    source = folder / "pytorch_lora_weights.safetensors"
    header = read_safetensors_header(source)
    tensors = {**load_file(source), "unet.conv_in.lora_magnitude_vector": torch.ones(4)}
    save_file(tensors, tmp_path / "pytorch_lora_weights.safetensors", metadata=header)
    card = ModelCard.load(write_model_card(tmp_path, repo_id="me/s"))
    assert card.data.peft_slider == SliderMetadata.from_header(header).to_dict()


# ---------------------------------------------------------------------------------------------------------------------
# What a push uploads: the slider files, the config, the card and its image; never anything else, never a link out.

SLIDER_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "pytorch_lora_weights.safetensors",
    "smiling_comfyui.safetensors",
    "sweep.png",
}


def _secrets_and_notes(folder, outside):
    (folder / ".env").write_text("HF_TOKEN=hf_secret\n")
    (folder / "notes.md").write_text("private notes\n")
    (folder / "train_log.jsonl").write_text("{}\n")


def _checkpoints(folder, outside):
    (folder / "checkpoint-100").mkdir()
    shutil.copyfile(folder / "adapter_model.safetensors", folder / "checkpoint-100" / "slider_adapter.safetensors")
    (folder / "checkpoint-100" / "optimizer.bin").write_bytes(b"optimizer state")
    (folder / "validation" / "step-000100").mkdir(parents=True)


def _links_out(folder, outside):
    (outside / "id_rsa").write_text("PRIVATE KEY\n")
    os.symlink(outside / "id_rsa", folder / "key.png")
    os.symlink(outside, folder / "linked_folder")
    shutil.copyfile(folder / "pytorch_lora_weights.safetensors", outside / "other.safetensors")
    os.symlink(outside / "other.safetensors", folder / "model.safetensors")


def _slider_file_linked_out(folder, outside):
    shutil.move(folder / "smiling_comfyui.safetensors", outside / "smiling_comfyui.safetensors")
    os.symlink(outside / "smiling_comfyui.safetensors", folder / "smiling_comfyui.safetensors")


def _card_image_linked_out(folder, outside):
    (outside / "secret.png").write_bytes(b"not the sweep")
    (folder / "sweep.png").unlink()
    os.symlink(outside / "secret.png", folder / "sweep.png")


def _two_saves(folder, outside):
    pipe = build_tiny_pipeline("sd15")
    pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=2, model=pipe.unet), "other")
    save_slider(pipe, outside, adapter_name="other", formats=["peft"])
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copyfile(outside / name, folder / name)


HOSTILE_FOLDERS = {
    # case: (change to a saved slider folder, what is uploaded or the error)
    "secrets and notes beside": (_secrets_and_notes, SLIDER_FILES),
    "trainer checkpoints and validation folders": (_checkpoints, SLIDER_FILES),
    "links out of the folder": (_links_out, SLIDER_FILES),
    "a slider file linked out": (_slider_file_linked_out, "links out are never followed"),
    "the card image linked out": (_card_image_linked_out, "links out are never followed"),
    "slider files of two saves": (_two_saves, "not written by one save"),
}


@pytest.mark.parametrize("case", list(HOSTILE_FOLDERS))
def test_push_uploads_only_the_slider(case, slider_folder, hub, tmp_path, caplog):
    change, expected = HOSTILE_FOLDERS[case]
    folder, outside = tmp_path / "run", tmp_path / "outside"
    shutil.copytree(slider_folder[0], folder)
    outside.mkdir()
    change(folder, outside)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            push_slider_to_hub(folder, "me/hostile", token=TOKEN, endpoint=hub.url)
        assert "me/hostile" not in hub.state.repos
        return
    assert set(slider_files_to_upload(folder)) == expected
    with caplog.at_level("INFO", logger="peft_slider.formats.hub"):
        push_slider_to_hub(folder, "me/hostile", token=TOKEN, endpoint=hub.url)
    # The push says what it uploads and what it leaves out.
    (message,) = [record.getMessage() for record in caplog.records if record.name == "peft_slider.formats.hub"]
    left_out = message.split("left out ", 1)[1]
    assert all(path.name in left_out for path in folder.iterdir() if path.name not in expected)
    files = hub.state.repos["me/hostile"].files
    assert set(files) == expected
    assert all(files[name] == (folder / name).read_bytes() for name in expected)


def test_loading_from_a_repo_reads_the_file_meant(slider_folder, hub, tmp_path):
    # A repo whose slider files come from two saves (here a PEFT file uploaded by hand beside a full push) is not
    # resolved silently to one of them: the user names the file.
    folder, source = slider_folder
    push_slider_to_hub(folder, "me/mixed", token=TOKEN, endpoint=hub.url)
    pipe = build_tiny_pipeline("sd15")
    pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=2, model=pipe.unet), "other")
    save_slider(pipe, tmp_path, adapter_name="other", formats=["peft"])
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.upload_file(
        path_or_fileobj=tmp_path / "adapter_model.safetensors",
        path_in_repo="adapter_model.safetensors",
        repo_id="me/mixed",
    )
    fresh = build_tiny_pipeline("sd15")
    with pytest.raises(HubError, match="not written by one save"):
        load_slider(fresh, "me/mixed", adapter_name="x", token=TOKEN, endpoint=hub.url)
    load_slider(
        fresh,
        "me/mixed",
        adapter_name="x",
        weight_name="pytorch_lora_weights.safetensors",
        token=TOKEN,
        endpoint=hub.url,
    )
    assert fresh.get_list_adapters() == {"unet": ["x"]}


def test_push_removes_slider_files_an_earlier_push_left(slider_folder, hub, tmp_path):
    push_slider_to_hub(slider_folder[0], "me/s", token=TOKEN, endpoint=hub.url)
    pipe = build_tiny_pipeline("sd15")
    pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=2, model=pipe.unet), "other")
    save_slider(pipe, tmp_path, adapter_name="other", formats=["peft"])
    push_slider_to_hub(tmp_path, "me/s", token=TOKEN, endpoint=hub.url)
    # The earlier diffusers and ComfyUI files would be another slider beside the new one; the card stays.
    assert set(hub.state.repos["me/s"].files) == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "sweep.png",
    }


# ---------------------------------------------------------------------------------------------------------------------
# The card shows metadata as text: no markup, no code, no local paths.

_INJECTED_BASE = 'x", torch_dtype=None); import os; os.system("echo pwned"); ("'


def _unknown_architecture() -> SliderMetadata:
    # As read from a file of a newer (or hostile) writer: an architecture this version does not know is kept.
    metadata = SliderMetadata(concept="age", base_model="/home/me/models/my-sd15")
    metadata.architecture = "Evil</p><script>alert(1)</script>"
    return metadata


CARD_INJECTIONS = {
    # case: the metadata
    "html and markdown in the concept": SliderMetadata(
        concept="<img src=x onerror=alert(1)> **big** [click](http://evil.example) | --- |\n# heading"
    ),
    "code in the base model": SliderMetadata(concept="age", base_model=_INJECTED_BASE),
    "a local base model path": SliderMetadata(concept="age", base_model="/home/me/models/my-sd15"),
    "markup in an unknown architecture": _unknown_architecture(),
}
_SNIPPET_NAMES = {"torch", "DiffusionPipeline", "pipe", "strength", "image", "load_slider"}


@pytest.mark.parametrize("case", list(CARD_INJECTIONS))
def test_model_card_shows_metadata_as_text(case, tmp_path):
    card = build_model_card(CARD_INJECTIONS[case], repo_id="me/s")
    card.save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None  # only a Hub id is a base model
    assert "<img" not in card.text and "<script" not in card.text and "</p>" not in card.text
    assert "](http://evil" not in card.text and "\n# heading" not in card.text
    assert "/home/me" not in card.content  # the YAML included
    for code in card.text.split("```python\n")[1:]:
        tree = ast.parse(code.split("```", 1)[0])
        assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import) and node.names[0].name == "os"]
        assert {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} <= _SNIPPET_NAMES


@pytest.mark.parametrize(
    "option, value",
    [
        ("repo_id", 'me/x"); os.system("pwned'),
        ("comfyui_file", "x`); os.system(1) #.safetensors"),
        ("grid_image", "x.png) ![y](http://evil.example/y.png"),
        ("license", "mit\nbase_model: evil/model"),
    ],
)
def test_model_card_refuses_hostile_options(option, value):
    with pytest.raises(ValueError, match=f"`{option}`"):
        build_model_card(_metadata(), **{option: value})


def test_saved_local_base_model_is_pushed_as_a_folder_name(hub, tmp_path):
    pipe = build_tiny_pipeline("sd15")
    pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=4, model=pipe.unet), "s")
    local = str(tmp_path / "models" / "my-sd15")
    with pytest.warns(UserWarning, match="records only its folder name 'my-sd15'"):
        save_slider(pipe, tmp_path / "out", adapter_name="s", metadata=SliderMetadata(base_model=local))
    write_model_card(tmp_path / "out", repo_id="me/local")
    push_slider_to_hub(tmp_path / "out", "me/local", token=TOKEN, endpoint=hub.url)
    for name, data in hub.state.repos["me/local"].files.items():
        assert str(tmp_path).encode() not in data, name
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model is None


def test_write_model_card_finds_a_relative_grid_image_in_the_folder(slider_folder, tmp_path, monkeypatch):
    folder = tmp_path / "slider"
    shutil.copytree(slider_folder[0], folder)
    monkeypatch.chdir(tmp_path)  # not the folder: the image is found in the folder all the same
    card = ModelCard.load(write_model_card(folder, grid_image="sweep.png", repo_id="me/s"))
    assert "![strength sweep](sweep.png)" in card.text
    with pytest.raises(ValueError, match=r"`grid_image` 'missing.png' does not exist \(looked at .*slider"):
        write_model_card(folder, grid_image="missing.png")
