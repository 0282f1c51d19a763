# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""Model cards for sliders, and pushing / fetching slider folders on the Hugging Face Hub.

Everything goes through huggingface_hub's own API (`ModelCard`, `HfApi.create_repo`, `HfApi.upload_folder`,
`hf_hub_download`); what this module adds is the card's content and errors that say what to do when the Hub cannot
be reached or the user is not logged in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..targeting.architectures import ARCHITECTURES, ArchitectureSpec
from ..utils.checks import REPO_ID
from .metadata import SliderMetadata, read_safetensors_header

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

__all__ = ["HubError", "build_model_card", "download_slider", "push_slider_to_hub", "write_model_card"]

_BASE_TAGS = ("lora", "slider", "concept-slider", "peft_slider", "diffusers")


class HubError(RuntimeError):
    """The Hub could not be reached, refused the credentials, or does not hold what was asked for."""


def _require_hub():
    try:
        import huggingface_hub
    except ImportError as error:  # pragma: no cover - a dependency of diffusers
        raise ImportError("Hub features need huggingface_hub: `pip install huggingface_hub`.") from error
    return huggingface_hub


def _family_tag(spec: ArchitectureSpec | None) -> str | None:
    if spec is None:
        return None
    return spec.hub_tag or (spec.aliases[0] if spec.aliases else None)


def _range_text(value: tuple[float, float] | None) -> str:
    return "not recorded" if value is None else f"{value[0]:g} to {value[1]:g}"


def _usage(metadata: SliderMetadata, repo_id: str, *, comfyui_file: str | None) -> str:
    base = metadata.base_model or "<base model>"
    low, high = metadata.recommended_range or (-1.0, 1.0)
    lines = [
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{base}", torch_dtype=torch.bfloat16)',
        f'pipe.load_lora_weights("{repo_id}", adapter_name="slider")',
        f"for strength in ({low:g}, 0.0, {high:g}):  # negative removes the concept, positive adds it",
        '    pipe.set_adapters(["slider"], adapter_weights=[strength])',
        '    image = pipe("a photo of a person", generator=torch.Generator().manual_seed(0)).images[0]',
        "```",
        "",
        "With peft_slider (any of the formats in this repo, checked before anything is loaded):",
        "",
        "```python",
        "from peft_slider import load_slider",
        "",
        f'load_slider(pipe, "{repo_id}", adapter_name="slider", strength={high:g})',
        "```",
        "",
        "With PEFT: `PeftModel.from_pretrained(denoiser, repo_id)` reads `adapter_config.json` and "
        "`adapter_model.safetensors`.",
    ]
    if comfyui_file is not None:
        lines += [
            "",
            f"ComfyUI / A1111: put `{comfyui_file}` in `models/loras` and load it with the LoRA loader; the strength "
            "works the same way (negative values included).",
        ]
    return "\n".join(lines)


def build_model_card(
    metadata: SliderMetadata,
    *,
    repo_id: str | None = None,
    grid_image: str | None = "sweep.png",
    license: str = "other",
    comfyui_file: str | None = None,
    usage: str | None = None,
) -> ModelCard:
    """A Hub model card for a slider: YAML metadata, usage code, the recommended strength range and the sweep grid.

    Args:
        metadata (`SliderMetadata`):
            The slider's metadata; its fields fill the card and a `peft_slider` block of the YAML header.
        repo_id (`str`, *optional*):
            The repo the card is for, used in the usage code (defaults to a placeholder).
        grid_image (`str`, *optional*, defaults to `"sweep.png"`):
            Path, relative to the card, of the strength-sweep grid image; `None` for no image.
        license (`str`, *optional*, defaults to `"other"`):
            The Hub license id; a slider inherits its base model's license, so pass that one.
        comfyui_file (`str`, *optional*):
            Name of the ComfyUI-ready file in the repo, if any.
        usage (`str`, *optional*):
            Markdown replacing the generated usage section.

    Returns:
        `huggingface_hub.ModelCard`: YAML `base_model`, `library_name: diffusers`, `license`, `tags` (`lora`, `slider`,
        the family), `pipeline_tag` and `peft_slider` (the metadata).

    Example:

    ```py
    >>> from peft_slider.formats import SliderMetadata, build_model_card
    >>> card = build_model_card(
    ...     SliderMetadata(concept="smiling", base_model="black-forest-labs/FLUX.1-dev", architecture="flux",
    ...                    recommended_range=(-2, 2)), repo_id="me/smile-slider")
    >>> card.data.base_model, "slider" in card.data.tags, "flux" in card.data.tags
    ('black-forest-labs/FLUX.1-dev', True, True)
    >>> "-2 to 2" in card.text
    True
    ```
    """
    hub = _require_hub()
    if not isinstance(metadata, SliderMetadata):
        raise TypeError(f"`metadata` must be a SliderMetadata, got {type(metadata).__name__}.")
    if repo_id is not None and (not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id)):
        raise ValueError(f"`repo_id` must look like 'owner/name', got {repo_id!r}.")
    tags = list(_BASE_TAGS)
    # The row of the architecture table; None for an architecture this version does not know.
    spec = ARCHITECTURES.get(metadata.architecture or "")
    family = _family_tag(spec)
    if family is not None:
        tags.append(family)
    video = spec is not None and spec.video
    data = hub.ModelCardData(
        base_model=metadata.base_model,
        library_name="diffusers",
        license=license,
        tags=tags,
        pipeline_tag="text-to-video" if video else "text-to-image",
        peft_slider=metadata.to_dict(),
    )
    concept = metadata.concept or "a concept"
    title = f"{metadata.concept} slider" if metadata.concept else "Concept slider"
    sections = [
        f"# {title}",
        "",
        f"A concept slider LoRA for `{metadata.base_model or 'its base model'}`"
        + (f" ({metadata.architecture})" if metadata.architecture else "")
        + f", trained with peft_slider. Positive strengths add {concept}, negative strengths remove it, 0 is the "
        "base model.",
        "",
        "| | |",
        "|---|---|",
        f"| Recommended strength range | {_range_text(metadata.recommended_range)} |",
        *(
            [
                f"| Calibrated strength range | {_range_text(metadata.strength_map.range)}: equal steps give equal "
                "concept change (`calibrated=True` in the pipeline mixin; `set_adapters` users pass "
                "`strength_map.strength_for(x)`) |"
            ]
            if metadata.strength_map is not None
            else []
        ),
        f"| Trained strength range | {_range_text(metadata.trained_strengths)} |",
        f"| Targeting scope | {metadata.scope or 'not recorded'} |",
        "| Switch on after | "
        + (
            "not recorded"
            if metadata.slider_start is None
            else f"{metadata.slider_start:.0%} of the denoising steps (keeps the base image's composition)"
        )
        + " |",
        f"| LoRA rank / alpha | {metadata.rank or '?'} / {metadata.alpha if metadata.alpha is not None else '?'} |",
        "",
    ]
    if grid_image is not None:
        sections += ["## Strength sweep", "", f"![strength sweep]({grid_image})", ""]
    sections += ["## Usage", "", usage or _usage(metadata, repo_id or "<repo id>", comfyui_file=comfyui_file), ""]
    sections += [
        "## Files",
        "",
        "- `pytorch_lora_weights.safetensors`: diffusers (`pipe.load_lora_weights`).",
        "- `adapter_config.json` + `adapter_model.safetensors`: PEFT (`PeftModel.from_pretrained`).",
    ]
    if comfyui_file is not None:
        sections.append(f"- `{comfyui_file}`: ComfyUI / A1111.")
    sections.append("")
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections)
    return hub.ModelCard(content)


def write_model_card(
    folder: str | os.PathLike,
    metadata: SliderMetadata | None = None,
    *,
    grid_image: str | os.PathLike | None = None,
    **card_options: Any,
) -> Path:
    """Write `README.md` into a slider folder, copying the sweep grid image in when it lies elsewhere.

    Args:
        folder (`str` or `os.PathLike`): The slider folder.
        metadata (`SliderMetadata`, *optional*): The slider's metadata; by default the one `save_slider` wrote into
            the folder's weights (with architecture, rank and alpha filled in).
        grid_image (`str` or `os.PathLike`, *optional*): The sweep grid image (any path); it is referenced by its file
            name and must exist.
        **card_options: further `build_model_card` options (`repo_id`, `license`, `comfyui_file`, `usage`).

    Returns:
        `pathlib.Path`: the README path.
    """
    folder = Path(folder)
    if metadata is None:
        from .files import weights_file

        if not folder.is_dir():
            raise ValueError(
                f"`folder` {str(folder)!r} does not exist; save the slider there first, or pass `metadata=`."
            )
        # The header alone: the card needs the metadata, not the weights.
        metadata = SliderMetadata.from_header(read_safetensors_header(weights_file(folder, None)))
        if metadata is None:
            raise ValueError(f"{str(folder)!r} holds a slider without slider metadata; pass `metadata=`.")
    folder.mkdir(parents=True, exist_ok=True)
    name = None
    if grid_image is not None:
        image = Path(grid_image)
        if not image.is_file():
            raise ValueError(f"`grid_image` {str(image)!r} does not exist; render the strength sweep first.")
        name = image.name
        if image.resolve() != (folder / name).resolve():
            shutil.copyfile(image, folder / name)
    if "comfyui_file" not in card_options:
        found = sorted(path.name for path in folder.glob("*_comfyui.safetensors"))
        card_options["comfyui_file"] = found[0] if found else None
    card = build_model_card(metadata, grid_image=name, **card_options)
    path = folder / "README.md"
    card.save(path)
    return path


def _hub_error(error: BaseException, *, endpoint: str, repo_id: str, action: str) -> HubError | None:
    """A HubError that says what to do, for the errors users meet; None for anything else."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(error, OfflineModeIsEnabled):
        return HubError(f"Cannot {action} {repo_id!r}: HF_HUB_OFFLINE is set. Unset it and try again when online.")
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            return HubError(
                f"Cannot {action} {repo_id!r} on {endpoint}: not logged in (the Hub answered 401): run "
                "`hf auth login` or pass token=..."
            )
        if status == 403:
            return HubError(
                f"Cannot {action} {repo_id!r} on {endpoint}: the token has no write access to it (403). Use a token "
                "with write permission, or push to your own namespace."
            )
        if isinstance(error, RepositoryNotFoundError) or status == 404:
            return HubError(f"Cannot {action} {repo_id!r} on {endpoint}: the repo does not exist or is private (404).")
        return None
    names = {klass.__name__ for klass in type(error).__mro__}
    if isinstance(error, OSError) or names & {"TransportError", "ConnectError", "NetworkError", "TimeoutException"}:
        return HubError(
            f"Cannot {action} {repo_id!r}: the Hub at {endpoint} could not be reached ({type(error).__name__}: "
            f"{error}). Check the network (or `endpoint=`), then push the saved folder again."
        )
    return None


def push_slider_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool = False,
    endpoint: str | None = None,
    commit_message: str = "Upload slider with peft_slider",
) -> str:
    """Create the Hub repo (if needed) and upload a slider folder to it.

    Args:
        folder (`str` or `os.PathLike`):
            A folder written by `save_slider` (and `write_model_card`).
        repo_id (`str`):
            ``"owner/name"``.
        token (`str` or `bool`, *optional*):
            A Hub token; by default the one `hf auth login` saved. `False` sends none.
        private (`bool`, *optional*, defaults to `False`):
            Create the repo private.
        endpoint (`str`, *optional*):
            The Hub URL; by default `HF_ENDPOINT` or https://huggingface.co.
        commit_message (`str`, *optional*):
            The commit message.

    Returns:
        `str`: the URL of the commit.

    Raises:
        `HubError`: offline, unauthenticated, no write access; the message says what to do.
    """
    hub = _require_hub()
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"`repo_id` must look like 'owner/name', got {repo_id!r}.")
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise ValueError(f"`folder` {str(folder)!r} must be a folder holding a saved slider (.safetensors files).")
    api = hub.HfApi(endpoint=endpoint, token=token)
    shown_endpoint = api.endpoint
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    except Exception as error:
        friendly = _hub_error(error, endpoint=shown_endpoint, repo_id=repo_id, action="push to")
        if friendly is None:
            raise
        raise friendly from error
    return str(commit.commit_url)


def download_slider(
    repo_id: str,
    *,
    weight_name: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
) -> Path:
    """Download a slider's weight file (and, for PEFT files, `adapter_config.json`) from the Hub.

    The file is `weight_name`, else `pytorch_lora_weights.safetensors`, else `adapter_model.safetensors`, else the
    repo's only `.safetensors` file.

    Returns:
        `pathlib.Path`: the local (cached) weight file.

    Raises:
        `HubError`: offline, unauthenticated, missing repo or file.
    """
    hub = _require_hub()
    from .files import PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME, weight_candidates

    api = hub.HfApi(endpoint=endpoint, token=token)
    try:
        files = api.list_repo_files(repo_id, revision=revision)
        if weight_name is None:
            # The same choice as for a local folder (peft_slider.formats.files).
            candidates = weight_candidates(files)
            if len(candidates) != 1:
                raise HubError(
                    f"{repo_id!r} holds {len(candidates)} .safetensors files ({candidates}); pass `weight_name=`."
                )
            weight_name = candidates[0]
        elif weight_name not in files:
            raise HubError(f"{repo_id!r} has no file {weight_name!r}; its files are {sorted(files)}.")
        kwargs = {"repo_id": repo_id, "revision": revision, "token": token, "endpoint": endpoint}
        path = hub.hf_hub_download(filename=weight_name, **kwargs)
        if weight_name.endswith(PEFT_WEIGHT_NAME) and PEFT_CONFIG_NAME in files:
            hub.hf_hub_download(filename=PEFT_CONFIG_NAME, **kwargs)
    except HubError:
        raise
    except Exception as error:
        friendly = _hub_error(error, endpoint=api.endpoint, repo_id=repo_id, action="download")
        if friendly is None:
            raise
        raise friendly from error
    return Path(path)
