"""Every parameter of the task, defined once.

``Settings`` is the single definition: each field carries its type, default, accepted range, label,
group, help text and summary (a few words, for the README's table). The Ikomia parameter class, the Studio
widget, the README's and docs/parameters.md's tables and the validation all derive from it, so they cannot
disagree. Ikomia passes values as strings:
``Settings.from_strings`` parses and checks all of them before any model work starts.
"""

import difflib
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields

import torch

from .constants import DEFAULT_DECODER, DEFAULT_PRIOR, PINNED_REVISIONS
from .errors import SettingsError
from .images import PASTE_BACK_FEATHER
from .memory import MEMORY_MODES
from .modes import MODES, OUTPAINT_MARGINS, OUTPAINT_MIN_SIDE, modes_reading
from .schedulers import DEFAULT_SCHEDULER, SAMPLERS, SCHEDULERS, steps_at

# The known repos that fit each mode: its decoder's default.
MODE_DECODERS = {name: mode.decoder.default_model for name, mode in MODES.items()}
KNOWN_DECODERS = tuple(dict.fromkeys(MODE_DECODERS.values()))
COMPILE_MODES = ("off", "default", "reduce-overhead")
MASK_MODES = ("repaint", "keep")
MAX_OUTPAINT_OVERLAP = 256
MAX_MIX_IMAGES = 8
MAX_IMAGES = 16
KNOWN_PRIORS = (DEFAULT_PRIOR,)
RANDOM_SEED = -1
MAX_RANDOM_SEED = 191965535
MAX_SIDE = 2048
SIDE_STEP = 64
MAX_STEPS = 1000
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
_INTEGER = re.compile(r"[+-]?\d+(\.0*)?")
_WEIGHT_SEPARATORS = re.compile(r"[\s,;]+")


def _own_decoders() -> str:
    """Which modes load their own decoder when model_name is left at its default, and which, in words."""
    users: dict[str, list[str]] = {}
    for name, repo in MODE_DECODERS.items():
        if repo != DEFAULT_DECODER:
            users.setdefault(repo, []).append(name)
    return "; ".join(
        f"{' and '.join(names)} {'uses' if len(names) == 1 else 'use'} {repo}"
        + (f"@{PINNED_REVISIONS[repo]}" if repo in PINNED_REVISIONS else "")
        for repo, names in users.items()
    )


@dataclass(frozen=True)
class Parameter:
    """What the task, the widget and the README know about one parameter."""

    name: str
    type: type
    default: object
    label: str
    group: str
    help: str
    # The help in a few words, for the README's table; the help itself is the tooltip and docs/parameters.md's.
    summary: str
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    allow_blank: bool = True
    default_text: str | None = None
    # How the Studio widget edits it: spin step, several lines of text, a list of known values, a folder.
    step: float = 1
    multiline: bool = False
    suggestions: tuple[str, ...] = ()
    # For some modes, the known values that fit them, in place of ``suggestions``: (mode, values) pairs.
    suggestions_by_mode: tuple[tuple[str, tuple[str, ...]], ...] = ()
    accepts_folder: bool = False
    # A list of local .safetensors files, separated by commas: the widget's button adds picked files to it.
    accepts_file: bool = False
    choices: tuple[str, ...] = ()
    # What some choices mean, for the widget's list: (choice, help) pairs.
    choice_help: tuple[tuple[str, str], ...] = ()
    # For free text: the characters the widget lets through (a regular expression over the whole text).
    pattern: str | None = None
    # The modes that read it, from the mode table (``modes.MODES``); empty: every mode.
    modes: tuple[str, ...] = ()
    # Read only when the run is on CUDA.
    cuda_only: bool = False

    def used_in(self, mode: str) -> bool:
        """Whether a run in ``mode`` reads this parameter."""
        return not self.modes or mode in self.modes

    def suggestions_in(self, mode: str) -> tuple[str, ...]:
        """The known values to offer in ``mode``: those that fit it."""
        return dict(self.suggestions_by_mode).get(mode, self.suggestions)

    def accepted(self) -> str:
        """Describe, for people, the values this parameter accepts."""
        if self.type is bool:
            return "True or False"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is str:
            return "text" if self.allow_blank else "non-empty text"
        noun = "a whole number" if self.type is int else "a number"
        if self.multiple_of:
            noun = f"a multiple of {self.multiple_of}"
        if self.minimum is not None and self.maximum is not None:
            return f"{noun} from {_number(self.minimum)} to {_number(self.maximum)}"
        if self.minimum is not None:
            return f"{noun} of at least {_number(self.minimum)}"
        return noun

    def accepted_briefly(self) -> str:
        """The accepted values in the fewest words, for the README's table: a range without its noun ("whole, 2 to
        1000"; "64 to 2048, by 64"; "0 to 1" for a real number), the choices without "one of"."""
        if self.choices:
            return ", ".join(self.choices)
        if self.type not in (int, float):
            return self.accepted()
        if self.minimum is not None and self.maximum is not None:
            span = f"{_number(self.minimum)} to {_number(self.maximum)}"
        elif self.minimum is not None:
            span = f"{_number(self.minimum)} or more"
        else:
            span = "any"
        if self.multiple_of:
            return f"{span}, by {self.multiple_of}"
        return f"whole, {span}" if self.type is int else span

    def default_as_text(self) -> str:
        """The default as the README shows it (some defaults depend on the machine)."""
        return self.default_text or self.to_string(self.default)

    def to_string(self, value: object) -> str:
        """Format a value the way Ikomia stores it."""
        return str(value)

    def parse(self, raw: object) -> object:
        """Turn a string from Ikomia into a checked value, or raise ``SettingsError``."""
        text = str(raw)
        value = self._convert(text.strip())
        if value is None or not self._in_range(value):
            raise SettingsError(f"{self.name}: received {text!r}; accepted: {self.accepted()}. {self.help}")
        return value

    def _convert(self, text: str) -> object:
        if self.choices:
            return text if text in self.choices else None
        if self.type is str:
            return text if (text or self.allow_blank) else None
        if self.type is bool:
            lowered = text.lower()
            return True if lowered in TRUE_WORDS else False if lowered in FALSE_WORDS else None
        if self.type is int:
            return int(text.partition(".")[0]) if _INTEGER.fullmatch(text) else None
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None

    def _in_range(self, value: object) -> bool:
        if self.type not in (int, float):
            return True
        if self.minimum is not None and value < self.minimum:
            return False
        if self.maximum is not None and value > self.maximum:
            return False
        return not (self.multiple_of and value % self.multiple_of)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _setting(
    default: object = MISSING,
    *,
    label: str,
    group: str,
    help: str,
    summary: str,
    default_factory: Callable[[], object] | None = None,
    **limits: object,
) -> Field:
    """Declare a field of ``Settings`` together with what the other layers need to know of it."""
    metadata = {"label": label, "group": group, "help": help, "summary": summary, **limits}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _margin(default: int, side: str, where: str) -> Field:
    """Declare one of outpaint's margins: pixels of the output painted on one side of the image."""
    return _setting(
        default,
        label=f"{side} margin",
        group="Outpaint",
        summary=f"outpaint: pixels painted {where} the image, at least.",
        help=(
            f"outpaint: pixels of the output painted {where} the image, at least: the image keeps its aspect, so where "
            "it differs from the box the margins leave, the rest of the box is painted too."
        ),
        minimum=0,
        maximum=MAX_SIDE - SIDE_STEP,
    )


@dataclass(frozen=True)
class Settings:
    """Checked settings of one generation; the fields, in order, are the task's parameters."""

    mode: str = _setting(
        "text2img",
        label="Mode",
        group="Mode",
        summary="What the run does (the table above); set it first.",
        help="; ".join(f"{name}: {mode.help}" for name, mode in MODES.items()) + ".",
        choices=tuple(MODES),
    )
    model_name: str = _setting(
        DEFAULT_DECODER,
        label="Decoder model",
        group="Models",
        summary="The decoder repo: a hub id or a local folder.",
        help=(
            "Hugging Face hub id (owner/name, or owner/name@revision) or local folder of a Kandinsky 2.2 decoder repo "
            "of the mode's kind: text-to-image, inpainting or ControlNet depth. Left at the default, "
            + _own_decoders()
            + "."
        ),
        allow_blank=False,
        suggestions=KNOWN_DECODERS,
        suggestions_by_mode=tuple((mode, (repo,)) for mode, repo in MODE_DECODERS.items()),
        accepts_folder=True,
    )
    prior_model_name: str = _setting(
        DEFAULT_PRIOR,
        label="Prior model",
        group="Models",
        summary="The prior repo: a hub id or a local folder.",
        help=(
            "Kandinsky 2.2 prior repo: a Hugging Face hub id (owner/name, or owner/name@revision) or a local folder."
        ),
        allow_blank=False,
        suggestions=KNOWN_PRIORS,
        accepts_folder=True,
    )
    depth_model: str = _setting(
        "",
        label="Depth model",
        group="Models",
        summary="A depth-estimation model that makes the depth map from a photo.",
        help=(
            "A transformers depth-estimation model (hub id owner/name, or owner/name@revision, or local folder; "
            "safetensors weights) that estimates the depth map from a photo, given in place of the depth map. "
            "Empty: the input is a depth map already."
        ),
        accepts_folder=True,
    )
    lora: str = _setting(
        "",
        label="LoRA weights",
        group="LoRA",
        summary="LoRA weights, separated by commas.",
        help=(
            "LoRA weights for the decoder's UNet, the prior, or both, separated by commas: each a local .safetensors "
            "file, a local folder or a Hugging Face hub repo (owner/name, or owner/name@revision) holding one, in "
            "diffusers' attention-processor format (the Kandinsky 2.2 LoRA training scripts') or the PEFT format. "
            "The file's keys say which model it changes. Changing it reloads no model. Empty: none."
        ),
        accepts_file=True,
    )
    lora_scale: str = _setting(
        "",
        label="LoRA scales",
        group="LoRA",
        summary="One strength per LoRA; empty: 1 each.",
        help=(
            "One number per entry of lora, in order, separated by commas or spaces: how strongly each changes its "
            "model (W + scale x up @ down, times alpha / rank where the file gives an alpha). Empty: 1 for each."
        ),
        pattern=r"[0-9.eE+\-\s,;]*",
    )
    prompt: str = _setting(
        "portrait of a young women, blue eyes, cinematic",
        label="Prompt",
        group="Prompt",
        summary="What the image should show.",
        help="What the image should show. CLIP reads the first 77 tokens.",
        multiline=True,
    )
    negative_prompt: str = _setting(
        "low quality, bad quality",
        label="Negative prompt",
        group="Prompt",
        summary="What it should not show (read above guidance 1).",
        help=(
            "What the picture should not show, for a decoder guidance scale above 1 (at 1 the decoder ignores it). "
            "In the modes that start from the prompt alone, the prior steers away from it too, unless a negative "
            "prior prompt is set. Empty: the embedding of an all-zero image, as in diffusers; this needs the prior's "
            "CLIP image encoder (3.69 GB more to download once)."
        ),
        multiline=True,
    )
    negative_prior_prompt: str = _setting(
        "",
        label="Negative prior prompt",
        group="Prompt",
        summary="What the prior's embedding of the prompt should avoid.",
        help=(
            "What the image embedding the prior makes of the prompt should avoid (the authors' "
            "negative_prior_prompt). In the modes that start from the prompt alone, the negative prompt then gets "
            "a prior run of its own and steers the decoder only; empty, it steers both, as in diffusers."
        ),
        multiline=True,
    )
    prior_num_inference_steps: int = _setting(
        25,
        label="Prior steps",
        group="Prior: prompt to image embedding",
        summary="Denoising steps of the prior.",
        help="Denoising steps of the prior.",
        minimum=2,
        maximum=MAX_STEPS,
    )
    prior_guidance_scale: float = _setting(
        4.0,
        label="Prior guidance scale",
        group="Prior: prompt to image embedding",
        summary="The prior's guidance: higher follows the prompt more closely.",
        help="Classifier-free guidance of the prior: higher follows the prompt more closely.",
        minimum=1.0,
        maximum=20.0,
        step=0.5,
    )
    prior_strength: float = _setting(
        0.85,
        label="Prior strength",
        group="Prior: prompt to image embedding",
        summary="How far the image's embedding moves towards the prompt.",
        help=(
            "How far the image embedding may move from the input image's towards the prompt: near 0 keeps the "
            "image's, 1 ignores it. The prior runs int(prior_num_inference_steps x prior_strength) steps, which must "
            "be one at least."
        ),
        minimum=0.0,
        maximum=1.0,
        step=0.05,
    )
    num_inference_steps: int = _setting(
        100,
        label="Decoder steps",
        group="Decoder: embedding to image",
        summary="Denoising steps of the decoder: more is slower, usually finer.",
        help="Denoising steps of the decoder: more is slower and usually finer.",
        minimum=1,
        maximum=MAX_STEPS,
    )
    guidance_scale: float = _setting(
        1.0,
        label="Decoder guidance scale",
        group="Decoder: embedding to image",
        summary="The decoder's guidance; on only above 1, at twice the work.",
        help="Classifier-free guidance of the decoder; on only above 1, where it doubles the decoder's work.",
        minimum=1.0,
        maximum=20.0,
        step=0.5,
    )
    scheduler: str = _setting(
        DEFAULT_SCHEDULER,
        label="Sampler",
        group="Decoder: embedding to image",
        summary="The decoder's sampler.",
        help=(
            "The decoder's sampler: default is the repo's own DDPM (100 steps by default); the others, named as in "
            "other tools, are usually run at fewer steps (DPM++ 2M, UniPC: 20 to 30; not measured here on the real "
            "weights). Changing it reloads nothing; the prior keeps its own."
        ),
        choices=SCHEDULERS,
        choice_help=(
            (DEFAULT_SCHEDULER, "the repo's own DDPMScheduler: stochastic, 100 steps by default"),
            *((name, sampler.help) for name, sampler in SAMPLERS.items()),
        ),
    )
    strength: float = _setting(
        0.3,
        label="Strength",
        group="Decoder: embedding to image",
        summary="How far the picture moves from the input image.",
        help=(
            "How far the picture may move from the input image: near 0 keeps it, 1 repaints it all. The decoder runs "
            "int(num_inference_steps x strength) steps, which must be one at least."
        ),
        minimum=0.0,
        maximum=1.0,
        step=0.05,
    )
    height: int = _setting(
        768,
        label="Height",
        group="Output",
        summary="Image height in pixels.",
        help="Image height in pixels.",
        minimum=SIDE_STEP,
        maximum=MAX_SIDE,
        multiple_of=SIDE_STEP,
        step=SIDE_STEP,
    )
    width: int = _setting(
        768,
        label="Width",
        group="Output",
        summary="Image width in pixels.",
        help="Image width in pixels.",
        minimum=SIDE_STEP,
        maximum=MAX_SIDE,
        multiple_of=SIDE_STEP,
        step=SIDE_STEP,
    )
    num_images: int = _setting(
        1,
        label="Images",
        group="Output",
        summary="Pictures per run, as one batch.",
        help="How many pictures one run makes, as one batch: picture 1 is output 0, the others outputs 2 and on.",
        minimum=1,
        maximum=MAX_IMAGES,
    )
    seed: int = _setting(
        RANDOM_SEED,
        label="Seed",
        group="Output",
        summary="-1: random; any other gives the same image every time.",
        help=f"-1 draws a random seed in [0, {MAX_RANDOM_SEED}]; any other value gives the same image every time.",
        minimum=RANDOM_SEED,
        maximum=2**63 - 1,
    )
    mix_images: int = _setting(
        2,
        label="Images to mix",
        group="Mix",
        summary="mix: how many image inputs.",
        help=(
            "mix: how many image inputs the task offers; each must be given an image. One image with an empty "
            "prompt gives variations of it; with a prompt, the image and the prompt are mixed."
        ),
        minimum=1,
        maximum=MAX_MIX_IMAGES,
    )
    mix_weights: str = _setting(
        "",
        label="Mix weights",
        group="Mix",
        summary="mix: one weight per image, then the prompt.",
        help=(
            "mix: one weight per item (image 1, image 2, ..., then the prompt when it is not empty), separated by "
            "commas or spaces. Empty: equal weights."
        ),
        pattern=r"[0-9.eE+\s,;]*",
    )
    mask_mode: str = _setting(
        "repaint",
        label="Mask mode",
        group="Inpaint and outpaint",
        summary="inpaint: repaint what the mask marks, or keep it.",
        help="inpaint: what the mask marks (white): repaint repaints it; keep keeps it and repaints everything else.",
        choices=MASK_MODES,
    )
    paste_back: bool = _setting(
        False,
        label="Paste back",
        group="Inpaint and outpaint",
        summary="Keep the input exactly outside the repainted area.",
        help=(
            "inpaint and outpaint: put the input back, pixel for pixel, outside the repainted area (the decoder "
            f"alters it slightly there), blending the new picture in over the first {PASTE_BACK_FEATHER} pixels "
            "(one latent) inside it."
        ),
    )
    # Margins in pixels, not fractions: the output size is set in pixels (height, width), so a margin in pixels says
    # exactly how much is painted and, with them, where the image goes. The defaults widen a picture.
    outpaint_top: int = _margin(0, "Top", "above")
    outpaint_bottom: int = _margin(0, "Bottom", "below")
    outpaint_left: int = _margin(128, "Left", "left of")
    outpaint_right: int = _margin(128, "Right", "right of")
    # 32 by default: four latents of 8 pixels, enough for the decoder to carry the image's content into the margin.
    outpaint_overlap: int = _setting(
        32,
        label="Overlap",
        group="Outpaint",
        summary="outpaint: image pixels repainted along each seam.",
        help=(
            "outpaint: pixels of the image, along each edge next to a painted margin, repainted too so that the "
            "seam blends."
        ),
        minimum=0,
        maximum=MAX_OUTPAINT_OVERLAP,
    )
    cuda: bool = _setting(
        default_factory=torch.cuda.is_available,
        label="Use CUDA",
        group="Device",
        summary="Run on the GPU in float16 where CUDA is available.",
        help="Run on the GPU in float16 where CUDA is available; otherwise, or when off, on the CPU in float32.",
        default_text="True where CUDA is available",
    )
    cuda_device: int = _setting(
        0,
        label="GPU",
        group="Device",
        summary="Which GPU, by torch's index.",
        help=(
            "Which GPU runs the task, by torch's index from 0 (CUDA_VISIBLE_DEVICES, where set, renumbers the GPUs it "
            "lists); each GPU loads models of its own. An index past the GPUs torch sees is refused; on the CPU it is "
            "not used, and the log says so."
        ),
        minimum=0,
        cuda_only=True,
    )
    memory_mode: str = _setting(
        "gpu",
        label="GPU memory",
        group="Device",
        summary="How the models use GPU memory (see Hardware).",
        help=(
            "How the models use GPU memory: "
            + "; ".join(f"{name}: {mode.help}" for name, mode in MEMORY_MODES.items())
            + ". Ignored on the CPU."
        ),
        choices=tuple(MEMORY_MODES),
        cuda_only=True,
    )
    cuda_graphs: bool = _setting(
        False,
        label="CUDA graphs",
        group="Device",
        summary="Replay forward passes from CUDA graphs; not measured yet.",
        help=(
            "Replay the prior's and the UNet's forward passes from CUDA graphs, captured at the first run with new "
            "inputs (a size, batch, guidance, mode or sampler not seen before: a few passes, no compiling): only "
            "where the weights stay in place ("
            + "; ".join(f"{name}: {', '.join(mode.graphed)}" for name, mode in MEMORY_MODES.items() if mode.graphed)
            + "), and not the UNet under compile_unet, which replays its own. Not yet measured on a GPU, so off "
            "by default; ignored on the CPU."
        ),
        cuda_only=True,
    )
    compile_unet: str = _setting(
        "off",
        label="Compile the UNet",
        group="Device",
        summary="Compile the decoder's UNet with torch.compile.",
        help=(
            "Compile the decoder's UNet with torch.compile in this mode (reduce-overhead, with CUDA graphs, is the "
            "fastest); ignored on the CPU. The first run compiles (about a minute on an H200), as does the first "
            "after a change of size, batch or guidance."
        ),
        choices=COMPILE_MODES,
        cuda_only=True,
    )

    def __post_init__(self) -> None:
        """Check values given directly from Python as strictly as those parsed from strings, and keep them as
        parsed: ``cuda_graphs="False"`` is False, ``height=768.0`` is 768."""
        for parameter in PARAMETERS:
            parsed = parameter.parse(parameter.to_string(getattr(self, parameter.name)))
            object.__setattr__(self, parameter.name, parsed)
        problems = [problem for check in _CHECKS for problem in check(self)]
        if problems:
            raise SettingsError("\n".join(problems))

    def reads(self, parameter_name: str) -> bool:
        """Whether a run in this mode reads ``parameter_name`` (``modes.Mode.parameters``)."""
        return self.mode in modes_reading(parameter_name)

    def lora_entries(self) -> tuple[str, ...]:
        """The entries of ``lora``, in order, each stripped of the spaces around it; none when it is empty."""
        text = self.lora.strip()
        return tuple(entry.strip() for entry in text.split(",")) if text else ()

    def lora_scale_values(self) -> tuple[float, ...]:
        """One scale per entry of ``lora``: ``lora_scale``'s numbers (never evaluated as code), or 1 for each when
        it is empty. Raises ``SettingsError`` naming lora_scale when they are not one finite number per entry."""
        count = len(self.lora_entries())
        text = self.lora_scale.strip()
        if not text:
            return (1.0,) * count
        try:
            scales = tuple(float(part) for part in _WEIGHT_SEPARATORS.split(text))
        except ValueError:
            scales = None
        if scales is None or len(scales) != count or not all(math.isfinite(scale) for scale in scales):
            entries = f"the {count} entr{'y' if count == 1 else 'ies'} of lora" if count else "lora, which is empty"
            raise SettingsError(
                f"lora_scale: received {self.lora_scale!r}; accepted: one number per entry of lora, in order, "
                f"separated by commas or spaces ({count} for {entries}), or empty for 1 each."
            )
        return scales

    def mix_item_count(self) -> int:
        """Mixed items: every image input, and the prompt when it is not empty."""
        return self.mix_images + (1 if self.prompt else 0)

    def mix_weight_values(self) -> tuple[float, ...]:
        """The mix weights as numbers (never evaluated as code); equal weights when none are given."""
        count = self.mix_item_count()
        text = self.mix_weights.strip()
        if not text:
            return (1.0 / count,) * count
        expected = f"{count} numbers, 0 or more and not all 0 (one per image, then one for the prompt if it is set)"
        try:
            weights = tuple(float(part) for part in _WEIGHT_SEPARATORS.split(text))
        except ValueError:
            weights = ()
        if len(weights) != count or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise SettingsError(f"mix_weights: received {self.mix_weights!r}; accepted: {expected}.")
        return weights

    @classmethod
    def from_strings(cls, values: Mapping[str, object]) -> "Settings":
        """Parse Ikomia's string values; missing names take their default.

        Raises ``SettingsError`` naming every refused value, and every unknown name, at once.
        """
        parameters = {parameter.name: parameter for parameter in PARAMETERS}
        problems = unknown_names(values)
        parsed = {}
        for name, raw in values.items():
            if name in parameters:
                try:
                    parsed[name] = parameters[name].parse(raw)
                except SettingsError as error:
                    problems.append(str(error))
        if problems:
            raise SettingsError("\n".join(problems))
        return cls(**parsed)

    def to_strings(self) -> dict[str, str]:
        """Every parameter as the string Ikomia stores."""
        return {parameter.name: parameter.to_string(getattr(self, parameter.name)) for parameter in PARAMETERS}


def _no_step(settings: Settings, strength: str, steps: str, stage: str) -> list[str]:
    """The refusal of a ``strength`` that leaves no step of ``stage``'s ``steps``, if the mode reads it and it
    does: the decoder would have nothing to run, and diffusers' prior returns no embedding at all then, without an
    error."""
    if not settings.reads(strength) or steps_at(getattr(settings, steps), getattr(settings, strength)) >= 1:
        return []
    return [
        f"{strength}: received '{getattr(settings, strength)}' with {steps} {getattr(settings, steps)}; "
        f"accepted: a {strength} that leaves {settings.mode} at least one {stage} step ({steps} x {strength} >= 1)."
    ]


def _strengths_leave_a_step(settings: Settings) -> list[str]:
    return _no_step(settings, "strength", "num_inference_steps", "decoder") + _no_step(
        settings, "prior_strength", "prior_num_inference_steps", "prior"
    )


def _margins_fit(settings: Settings) -> list[str]:
    """Refuse outpaint margins that paint nothing, and margins that leave the image less than 64 x 64 pixels."""
    if not settings.reads("outpaint_left"):
        return []
    problems = []
    if not any(getattr(settings, name) for name in OUTPAINT_MARGINS):
        problems.append(
            f"outpaint: every margin is 0 ({', '.join(OUTPAINT_MARGINS)}); accepted: at least one margin above 0, "
            "in pixels of the output to paint beyond the image."
        )
    for first, second, side in (
        ("outpaint_left", "outpaint_right", "width"),
        ("outpaint_top", "outpaint_bottom", "height"),
    ):
        size, margins = getattr(settings, side), (getattr(settings, first), getattr(settings, second))
        if sum(margins) > size - OUTPAINT_MIN_SIDE:
            problems.append(
                f"{first} + {second}: received {margins[0]} + {margins[1]} = {sum(margins)} with {side} {size}; "
                f"accepted: at most {side} - {OUTPAINT_MIN_SIDE} = {size - OUTPAINT_MIN_SIDE}, so that the image "
                f"keeps at least {OUTPAINT_MIN_SIDE} pixels of the {side}."
            )
    return problems


def _loras_fit(settings: Settings) -> list[str]:
    """Refuse an empty entry in ``lora`` (two commas in a row), and scales that do not match its entries."""
    problems = []
    if any(not entry for entry in settings.lora_entries()):
        problems.append(
            f"lora: received {settings.lora!r}, which has an empty entry; accepted: LoRA weights (files, folders or "
            "hub ids) separated by single commas."
        )
    try:
        settings.lora_scale_values()
    except SettingsError as error:
        problems.append(str(error))
    return problems


def _mix_weights_fit(settings: Settings) -> list[str]:
    if not settings.reads("mix_weights"):
        return []
    try:
        settings.mix_weight_values()
    except SettingsError as error:
        return [str(error)]
    return []


# The checks of values that are each in range but may not fit together, in the mode the settings run: each
# returns its problems, and all are refused at once.
_CHECKS: tuple[Callable[[Settings], list[str]], ...] = (
    _strengths_leave_a_step,
    _margins_fit,
    _loras_fit,
    _mix_weights_fit,
)


def unknown_names(values: Mapping[str, object]) -> list[str]:
    """A message for each name in ``values`` that is not a parameter (a typo would otherwise be ignored): the known
    names closest to it first (``difflib.get_close_matches``: "did you mean num_inference_steps?"), where any is
    close, then every known name."""
    known = [parameter.name for parameter in PARAMETERS]
    messages = []
    for name in values:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=3)
        listed = ", ".join(known)
        if close:
            messages.append(f"{name}: unknown parameter; did you mean {' or '.join(close)}? Known parameters: {listed}")
        else:
            messages.append(f"{name}: unknown parameter; known parameters: {listed}")
    return messages


def _parameter_from_field(settings_field: Field, annotation: type) -> Parameter:
    metadata = dict(settings_field.metadata)
    if settings_field.default_factory is not MISSING:
        default = settings_field.default_factory()
    else:
        default = settings_field.default
    readers = modes_reading(settings_field.name)
    modes = readers if len(readers) < len(MODES) else ()
    return Parameter(name=settings_field.name, type=annotation, default=default, modes=modes, **metadata)


PARAMETERS: tuple[Parameter, ...] = tuple(
    _parameter_from_field(settings_field, typing.get_type_hints(Settings)[settings_field.name])
    for settings_field in fields(Settings)
)


def _default_cell(parameter: Parameter) -> str:
    default = parameter.default_as_text()
    if parameter.default_text is None:
        default = f"`{default}`" if default else "(empty)"
    return default


def markdown_table() -> str:
    """The full parameter table of docs/parameters.md, generated from the definitions above: each parameter's
    type, default, accepted values and whole help."""
    rows = ["| name | type | default | accepted | what it does |", "|---|---|---|---|---|"]
    for parameter in PARAMETERS:
        rows.append(
            f"| {parameter.name} | {parameter.type.__name__} | {_default_cell(parameter)} | {parameter.accepted()} "
            f"| {parameter.help} |"
        )
    return "\n".join(rows)


def summary_table() -> str:
    """The README's parameter table, generated from the definitions above: each parameter's default, accepted
    values and summary (the whole help is in docs/parameters.md)."""
    rows = ["| name | default | accepted | what it does |", "|---|---|---|---|"]
    for parameter in PARAMETERS:
        rows.append(
            f"| {parameter.name} | {_default_cell(parameter)} | {parameter.accepted_briefly()} | {parameter.summary} |"
        )
    return "\n".join(rows)
