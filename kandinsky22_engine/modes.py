"""Every mode of the task, defined once.

``MODES`` holds one ``Mode`` per mode: the decoder it uses (cache role, the diffusers pipeline its repo loads as,
the UNet it needs, its default repo), the inputs the task offers for it, the parameters only it reads, and its
prior stage (``stages.PriorStage``). The task's inputs, the widget, the README's mode table, the parameters'
checks, the preparation of the inputs and progress counting all read this table; ``generation.py`` runs a mode's
stages in order. Adding a mode is one entry here (and a stage in ``stages.py`` if none of the loops serves it).
"""

from dataclasses import dataclass

from diffusers import (
    DiffusionPipeline,
    KandinskyV22ControlnetPipeline,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
)

from .constants import DEFAULT_CONTROLNET_DECODER, DEFAULT_DECODER, DEFAULT_INPAINT_DECODER
from .stages import IMAGE_PRIOR, MIX_PRIOR, TEXT_PRIOR, PriorStage

IMAGE_INPUT = "image"
DRAWING_INPUT = "mask drawing"
MASK_INPUT = "mask"
DEPTH_INPUT = "depth map"
# Stands for mix_images inputs named "image 1", "image 2", ... in a mode's inputs.
MIX_INPUTS = "image {number}"
OUTPAINT_MARGINS = ("outpaint_top", "outpaint_bottom", "outpaint_left", "outpaint_right")
# The image keeps at least 64 x 64 pixels of the output in outpaint (8 x 8 latents): content to carry into the margins.
OUTPAINT_MIN_SIDE = 64


@dataclass(frozen=True)
class Decoder:
    """The decoder a mode uses: its cache role, the diffusers pipeline its repo loads as (a container of its UNet,
    scheduler and MoVQ), the UNet it needs (input channels and added embedding type, from the UNet's config), what
    such a decoder is called, and its default repo. Modes that share a role share the loaded decoder."""

    role: str
    pipeline_class: type[DiffusionPipeline]
    in_channels: int
    addition_embed_type: str
    kind: str
    default_model: str


TEXT2IMG_DECODER = Decoder("decoder", KandinskyV22Pipeline, 4, "image", "a text-to-image decoder", DEFAULT_DECODER)
# The UNet reads the latents, the masked image's latents and the mask: 4 + 4 + 1 channels.
INPAINT_DECODER = Decoder(
    "inpaint_decoder", KandinskyV22InpaintPipeline, 9, "image", "an inpainting decoder", DEFAULT_INPAINT_DECODER
)
CONTROLNET_DECODER = Decoder(
    "controlnet_decoder",
    KandinskyV22ControlnetPipeline,
    8,
    "image_hint",
    "a ControlNet depth decoder",
    DEFAULT_CONTROLNET_DECODER,
)


@dataclass(frozen=True)
class Mode:
    """One mode of the task, as every layer sees it.

    Attributes:
        name: the value of the ``mode`` parameter.
        help: what the mode does, for the ``mode`` parameter's help.
        decoder: the decoder it runs (``Decoder``); an inpainting decoder repaints where its mask says, a ControlNet
            decoder follows its depth map (``stages.decode``).
        inputs: the names of the inputs the task offers, in order; ``MIX_INPUTS`` stands for ``mix_images``
            inputs.
        parameters: the parameters that only some modes read and this one does (the others read all the rest). A
            mode that reads ``strength`` is image-to-image: its decoder starts from the input image, noised.
        prior: the prior stage (``stages.TEXT_PRIOR``, ``IMAGE_PRIOR`` or ``MIX_PRIOR``).
        embedded_inputs: the inputs the prior stage embeds with the prior repo's CLIP image encoder
            (``MIX_INPUTS`` stands for mix's images).
        canvas: the image is placed on a canvas with margins to paint (``images.outpaint_canvas``), rather than
            fitted to the output size.
    """

    name: str
    help: str
    decoder: Decoder
    inputs: tuple[str, ...]
    parameters: tuple[str, ...] = ()
    prior: PriorStage = TEXT_PRIOR
    embedded_inputs: tuple[str, ...] = ()
    canvas: bool = False

    @property
    def image_to_image(self) -> bool:
        """Whether the decoder starts from the input image, noised to ``strength``, rather than from noise."""
        return "strength" in self.parameters


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("text2img", "from the prompt alone", TEXT2IMG_DECODER, ()),
        Mode(
            "img2img",
            "transform an input image",
            TEXT2IMG_DECODER,
            (IMAGE_INPUT,),
            parameters=("strength",),
        ),
        Mode(
            "inpaint",
            "repaint the masked part of an image",
            INPAINT_DECODER,
            (IMAGE_INPUT, DRAWING_INPUT, MASK_INPUT),
            parameters=("mask_mode", "paste_back"),
        ),
        Mode(
            "outpaint",
            "extend an image past its borders",
            INPAINT_DECODER,
            (IMAGE_INPUT,),
            parameters=("paste_back", *OUTPAINT_MARGINS, "outpaint_overlap"),
            canvas=True,
        ),
        Mode(
            "controlnet_depth",
            "follow the layout of a depth map",
            CONTROLNET_DECODER,
            (DEPTH_INPUT,),
            parameters=("depth_model",),
        ),
        Mode(
            "controlnet_img2img",
            "transform an input image while following the layout of a depth map",
            CONTROLNET_DECODER,
            (IMAGE_INPUT, DEPTH_INPUT),
            parameters=("strength", "prior_strength", "depth_model"),
            prior=IMAGE_PRIOR,
            embedded_inputs=(IMAGE_INPUT,),
        ),
        Mode(
            "mix",
            "blend images and the prompt, or make variations of one image",
            TEXT2IMG_DECODER,
            (MIX_INPUTS,),
            parameters=("mix_images", "mix_weights"),
            prior=MIX_PRIOR,
            embedded_inputs=(MIX_INPUTS,),
        ),
    )
}

DECODER_ROLES = tuple(dict.fromkeys(mode.decoder.role for mode in MODES.values()))


def estimates_depth(mode: str, depth_model: str) -> bool:
    """Whether a run in ``mode`` estimates its depth map from a photo: depth_model is set and the mode reads a
    depth map (``DEPTH_INPUT``)."""
    return bool(depth_model) and DEPTH_INPUT in MODES[mode].inputs


def input_names(mode: str, mix_images: int = 2, depth_model: str = "") -> tuple[str, ...]:
    """The names of the inputs the task offers in ``mode``, in order (mix offers ``mix_images`` images).

    With ``depth_model`` set, a mode's depth map input gives way to the photo its depth is estimated from: the image
    input takes its place, or it is dropped when the mode reads the image already.
    """
    names = _expand(MODES[mode].inputs, mix_images)
    if estimates_depth(mode, depth_model):
        names = tuple(dict.fromkeys(IMAGE_INPUT if name == DEPTH_INPUT else name for name in names))
    return names


def embedded_input_names(mode: str, mix_images: int = 2) -> tuple[str, ...]:
    """The names of the inputs whose pictures the prior stage of ``mode`` embeds with CLIP."""
    return _expand(MODES[mode].embedded_inputs, mix_images)


def _expand(inputs: tuple[str, ...], mix_images: int) -> tuple[str, ...]:
    names: list[str] = []
    for name in inputs:
        if name == MIX_INPUTS:
            names += [MIX_INPUTS.format(number=number) for number in range(1, mix_images + 1)]
        else:
            names.append(name)
    return tuple(names)


def modes_reading(parameter_name: str) -> tuple[str, ...]:
    """The modes that read ``parameter_name``: those that list it, or every mode when none does."""
    listing = tuple(name for name, mode in MODES.items() if parameter_name in mode.parameters)
    return listing or tuple(MODES)
