# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""Model cards for sliders, and pushing / fetching slider folders on the Hugging Face Hub.

Everything goes through huggingface_hub's own API (`ModelCard`, `HfApi.create_repo`, `HfApi.create_commit`,
`hf_hub_download`); what this module adds is the card's content (metadata shown as escaped text), the choice of what
is uploaded (an allow-list, never a link out of the folder), and errors that say what to do when the Hub cannot be
reached or the user is not logged in.
"""

from __future__ import annotations

import copy
import html
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..targeting.architectures import ARCHITECTURES, ArchitectureSpec
from ..utils.checks import is_repo_id
from .files import (
    DIFFUSERS_WEIGHT_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHT_NAME,
    SAVE_ID_KEY,
    SliderFileError,
    check_one_save,
    weight_candidates,
)
from .metadata import SliderMetadata, public_model_name, read_safetensors_header

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

__all__ = [
    "HubError",
    "build_model_card",
    "download_slider",
    "push_slider_to_hub",
    "slider_files_to_upload",
    "write_model_card",
]

logger = logging.getLogger(__name__)

_BASE_TAGS = ("lora", "slider", "concept-slider", "peft_slider", "diffusers")
# Characters markdown gives a meaning to; metadata text is shown as text, never as markup.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")


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


def _markdown_text(value: Any) -> str:
    """`value` as plain text inside markdown: one line, HTML escaped, markdown punctuation backslash-escaped."""
    text = " ".join(str(value).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def _check_name(value: Any, argument: str, pattern: str, example: str) -> None:
    if value is not None and (not isinstance(value, str) or not re.fullmatch(pattern, value) or ".." in value):
        raise ValueError(f"`{argument}` must be a plain relative file name such as {example!r}, got {value!r}.")


def _base_model_id(metadata: SliderMetadata) -> str | None:
    """The base model as a Hub id, or None when the metadata records none (a folder name, or anything else)."""
    base = metadata.base_model
    return base if base is not None and is_repo_id(base) else None


def _usage(metadata: SliderMetadata, repo_id: str, *, comfyui_file: str | None) -> str:
    # Code is built with repr(): a recorded value is a string literal in it, whatever it holds.
    base = _base_model_id(metadata) or "<base model>"
    low, high = metadata.recommended_range or (-1.0, 1.0)
    lines = [
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        f"pipe = DiffusionPipeline.from_pretrained({base!r}, torch_dtype=torch.bfloat16)",
        f"pipe.load_lora_weights({repo_id!r}, adapter_name='slider')",
        f"for strength in ({low:g}, 0.0, {high:g}):  # negative removes the concept, positive adds it",
        "    pipe.set_adapters(['slider'], adapter_weights=[strength])",
        "    image = pipe('a photo of a person', generator=torch.Generator().manual_seed(0)).images[0]",
        "```",
        "",
        "With peft_slider (any of the formats in this repo, checked before anything is loaded):",
        "",
        "```python",
        "from peft_slider import load_slider",
        "",
        f"load_slider(pipe, {repo_id!r}, adapter_name='slider', strength={high:g})",
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
            The slider's metadata; its fields fill the card and a `peft_slider` block of the YAML header. They are
            shown as text (HTML and markdown escaped), and the base model appears in the YAML and the usage code
            only when it is a Hub id (``"owner/name"``); code is built with `repr`, so no value can run as code.
        repo_id (`str`, *optional*):
            The repo the card is for, used in the usage code (defaults to a placeholder).
        grid_image (`str`, *optional*, defaults to `"sweep.png"`):
            Path, relative to the card, of the strength-sweep grid image; `None` for no image.
        license (`str`, *optional*, defaults to `"other"`):
            The Hub license id; a slider inherits its base model's license, so pass that one.
        comfyui_file (`str`, *optional*):
            Name of the ComfyUI-ready file in the repo, if any.
        usage (`str`, *optional*):
            Markdown replacing the generated usage section, used as given (it is the caller's own text).

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
    if repo_id is not None and not is_repo_id(repo_id):
        raise ValueError(f"`repo_id` must look like 'owner/name', got {repo_id!r}.")
    if not isinstance(license, str) or not _LICENSE.fullmatch(license):
        raise ValueError(f"`license` must be a Hub license id such as 'apache-2.0' or 'other', got {license!r}.")
    _check_name(grid_image, "grid_image", r"[\w.-]+(/[\w.-]+)*", "sweep.png")
    _check_name(comfyui_file, "comfyui_file", r"[\w.-]+\.safetensors", "smiling_comfyui.safetensors")
    if metadata.base_model:
        # A local path never reaches the card, its YAML included (see `public_model_name`).
        # A copy, not dataclasses.replace: that would re-check an architecture a newer peft_slider wrote.
        metadata = copy.copy(metadata)
        metadata.base_model = public_model_name(metadata.base_model)
    base_id = _base_model_id(metadata)
    tags = list(_BASE_TAGS)
    # The row of the architecture table; None for an architecture this version does not know.
    spec = ARCHITECTURES.get(metadata.architecture or "")
    family = _family_tag(spec)
    if family is not None:
        tags.append(family)
    video = spec is not None and spec.video
    data = hub.ModelCardData(
        base_model=base_id,
        library_name="diffusers",
        license=license,
        tags=tags,
        pipeline_tag="text-to-video" if video else "text-to-image",
        peft_slider=metadata.to_dict(),
    )
    # Every recorded value is text, not markup: a file's metadata is anyone's input.
    concept = _markdown_text(metadata.concept) if metadata.concept else "a concept"
    title = f"{concept} slider" if metadata.concept else "Concept slider"
    if base_id is not None:
        base_text = f"`{base_id}`"
    elif metadata.base_model:
        base_text = f"{_markdown_text(metadata.base_model)} (a local model, not a Hub id)"
    else:
        base_text = "its base model"
    sections = [
        f"# {title}",
        "",
        f"A concept slider LoRA for {base_text}"
        + (f" ({_markdown_text(metadata.architecture)})" if metadata.architecture else "")
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
        f"| Targeting scope | {_markdown_text(metadata.scope or 'not recorded')} |",
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
        grid_image (`str` or `os.PathLike`, *optional*): The sweep grid image; a relative path is taken relative to
            `folder`. It is referenced by its file name, copied into `folder` when it lies elsewhere, and must exist.
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
        image = folder / grid_image  # an absolute `grid_image` replaces `folder`
        if not image.is_file():
            raise ValueError(
                f"`grid_image` {str(grid_image)!r} does not exist (looked at {str(image)!r}; a relative path is taken "
                "relative to `folder`); render the strength sweep first."
            )
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


def _card_images(card_path: Path) -> list[str]:
    """The image files a model card shows with `![...](name)`."""
    if not card_path.is_file():
        return []
    names = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", card_path.read_text(encoding="utf-8", errors="replace"))
    return [
        name
        for name in names
        if name.lower().endswith(_IMAGE_SUFFIXES) and not name.startswith("/") and ".." not in name and ":" not in name
    ]


def slider_files_to_upload(folder: str | os.PathLike) -> list[str]:
    """The files `push_slider_to_hub` uploads from `folder`, and nothing else: the slider weights
    (`pytorch_lora_weights.safetensors`, `adapter_model.safetensors`, `*_comfyui.safetensors`), `adapter_config.json`,
    `README.md` and the images it shows. Anything else (`.env`, notes, `checkpoint-*` folders, logs) stays local.

    Raises:
        `ValueError`: a file to upload is a link leading out of `folder`, or the slider files are not from one save.

    Example:

    ```py
    >>> import tempfile
    >>> from peft_slider import SliderLoraConfig
    >>> from peft_slider.formats import save_slider
    >>> from pathlib import Path
    >>> from peft_slider.formats.hub import slider_files_to_upload
    >>> from peft_slider.testing.tiny_pipelines import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline("sd15")
    >>> pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=4, model=pipe.unet))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = save_slider(pipe, folder)
    ...     _ = Path(folder, ".env").write_text("HF_TOKEN=secret")
    ...     slider_files_to_upload(folder)
    ['adapter_config.json', 'adapter_model.safetensors', 'pytorch_lora_weights.safetensors']
    ```
    """
    folder = Path(folder)
    root = folder.resolve()
    weights = [name for name in (DIFFUSERS_WEIGHT_NAME, PEFT_WEIGHT_NAME) if (folder / name).is_file()]
    weights += sorted(
        path.name for path in folder.glob("*_comfyui.safetensors") if not path.name.startswith(".") and path.is_file()
    )
    if not weights:
        raise ValueError(
            f"`folder` {str(folder)!r} must be a folder holding a saved slider (pytorch_lora_weights.safetensors, "
            "adapter_model.safetensors or *_comfyui.safetensors); save it with `save_slider` first."
        )
    try:
        check_one_save(folder, weights)
    except SliderFileError as error:
        raise ValueError(f"`folder`: {error} Save the slider again before pushing.") from None
    names = (
        weights
        + [PEFT_CONFIG_NAME] * (PEFT_WEIGHT_NAME in weights)
        + ["README.md"]
        + _card_images(folder / "README.md")
    )
    chosen = []
    for name in dict.fromkeys(names):
        path = folder / name
        if not path.is_file():
            continue
        # A link may point inside the folder; one leading out would upload a file the folder does not hold.
        target = path.resolve()
        if target != root and root not in target.parents:
            raise ValueError(
                f"`folder` {str(folder)!r}: {name!r} is a link to {str(target)!r}, outside the folder; links out are "
                "never followed. Copy the file into the folder instead."
            )
        chosen.append(name)
    return sorted(chosen)


def push_slider_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool = False,
    endpoint: str | None = None,
    commit_message: str = "Upload slider with peft_slider",
) -> str:
    """Create the Hub repo (if needed) and upload a slider folder's slider files to it.

    Only the files `slider_files_to_upload(folder)` lists are uploaded (the slider weights, `adapter_config.json`,
    `README.md` and the images it shows), and slider files of an earlier push that this one lacks are deleted from
    the repo, so the repo holds one slider. What is uploaded and what is left out is logged (`logging.INFO`).

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
        `ValueError`: `repo_id` is not ``"owner/name"``; `folder` holds no slider, slider files of several saves, or
        a file to upload that is a link out of the folder.
    """
    hub = _require_hub()
    if not is_repo_id(repo_id):
        raise ValueError(f"`repo_id` must look like 'owner/name', got {repo_id!r}.")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`folder` {str(folder)!r} must be a folder holding a saved slider; it does not exist.")
    names = slider_files_to_upload(folder)
    left_out = sorted(path.name + "/" * path.is_dir() for path in folder.iterdir() if path.name not in names)
    api = hub.HfApi(endpoint=endpoint, token=token)
    shown_endpoint = api.endpoint
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        # Slider files in the repo that this push does not bring (an earlier push's other formats) go.
        stale = [
            name
            for name in api.list_repo_files(repo_id)
            if "/" not in name and name not in names and (name.endswith(".safetensors") or name == PEFT_CONFIG_NAME)
        ]
        operations = [hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in names]
        operations += [hub.CommitOperationDelete(path_in_repo=name) for name in stale]
        logger.info(
            "Pushing to %s: uploading %s; deleting from the repo %s; left out %s.",
            repo_id,
            names,
            stale or "nothing",
            left_out or "nothing",
        )
        commit = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
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

    The file is `weight_name`; else the repo's only `.safetensors` file at its top level; else, when one save wrote
    them all (their headers, read without downloading the weights, share one `peft_slider.save_id`),
    `pytorch_lora_weights.safetensors`, else `adapter_model.safetensors`, else the ComfyUI file, as for a local folder.

    Returns:
        `pathlib.Path`: the local (cached) weight file.

    Raises:
        `HubError`: offline, unauthenticated, missing repo or file, or several slider files not from one save.
    """
    hub = _require_hub()

    api = hub.HfApi(endpoint=endpoint, token=token)
    try:
        files = api.list_repo_files(repo_id, revision=revision)
        if weight_name is None:
            names = sorted(name for name in files if "/" not in name and name.endswith(".safetensors"))
            if not names:
                raise HubError(f"{repo_id!r} holds no .safetensors slider file; its files are {sorted(files)}.")
            if len(names) > 1:
                # The same rule as for a local folder (peft_slider.formats.files): several files are one slider only when
                # one save wrote them all.
                ids = {
                    name: api.parse_safetensors_file_metadata(repo_id, name, revision=revision).metadata.get(
                        SAVE_ID_KEY
                    )
                    for name in names
                }
                if len(set(ids.values())) != 1 or None in ids.values():
                    raise HubError(
                        f"{repo_id!r} holds {len(names)} slider files that were not written by one save: {names}. "
                        "Pass `weight_name=` naming the file you mean."
                    )
            weight_name = weight_candidates(names)[0]
        elif weight_name not in files:
            raise HubError(f"{repo_id!r} has no file {weight_name!r}; its files are {sorted(files)}.")
        kwargs = {"repo_id": repo_id, "revision": revision, "token": token, "endpoint": endpoint}
        path = hub.hf_hub_download(filename=weight_name, **kwargs)
        config_name = str(Path(weight_name).with_name(PEFT_CONFIG_NAME).as_posix())
        if Path(weight_name).name == PEFT_WEIGHT_NAME and config_name in files:
            hub.hf_hub_download(filename=config_name, **kwargs)
    except HubError:
        raise
    except Exception as error:
        friendly = _hub_error(error, endpoint=api.endpoint, repo_id=repo_id, action="download")
        if friendly is None:
            raise
        raise friendly from error
    return Path(path)
