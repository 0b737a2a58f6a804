"""The memory modes, defined once: how each places the models on the GPU, what it keeps in CPU memory, and what
it suggests when the GPU runs out of memory.

``MEMORY_MODES`` holds the four the ``memory_mode`` parameter offers on CUDA; ``CPU`` is the one a run on the
CPU has, where there is nothing to offload. The parameter's choices and help, the placement of every model
(``models``), which decoders are set aside (``generation.load_models``), what an out-of-memory error
suggests, which stages may replay CUDA graphs (``graphs``) and docs/hardware.md's table all read this table.

The words used:

- placed: moved to the device once, where it stays;
- parked: kept in CPU memory (pinned on CUDA) and copied to the device only while it runs (``models.Parking``);
- model_offload, sequential_offload: diffusers' ``enable_model_cpu_offload`` (each model moves to the device
  when it runs and back when the next one does) and ``enable_sequential_cpu_offload`` (accelerate moves each
  layer during the forward; the prior repo's image encoder is offloaded the same way, by accelerate's
  ``cpu_offload``);
- set aside: a decoder that another mode's run does not use, parked whole until a run asks for it again.
"""

from dataclasses import dataclass

PLACED = "placed"
PARKED = "parked"
MODEL_OFFLOAD = "model_offload"
SEQUENTIAL_OFFLOAD = "sequential_offload"
PRIOR_ROLE = "prior"
DECODER_ROLE = "decoder"


@dataclass(frozen=True)
class MemoryMode:
    """One memory mode: what it does with each model, and what to try when it does not fit.

    Fields:
        name: the ``memory_mode`` value.
        help: what it is for, one clause (the parameter's help and docs/hardware.md's table).
        pipelines: how the prior and the decoders are placed: ``PLACED``, ``MODEL_OFFLOAD`` or
            ``SEQUENTIAL_OFFLOAD``.
        parked_prior_models: the prior pipeline's models parked instead of placed, which visit the device for
            the prior stage only.
        decoder_placement: the memory mode in a decoder's cache key: prior_offload places decoders as gpu does,
            so switching between the two reloads no decoder.
        image_encoder: how the prior repo's CLIP image encoder is kept: ``PLACED``, ``PARKED`` (it runs once per
            process for the all-zero image, and for mix's images) or ``SEQUENTIAL_OFFLOAD``.
        depth_estimator: how depth_model's model is kept: ``PLACED`` or ``PARKED``.
        sets_aside_other_decoders: whether a run first parks the decoders of the other modes, left on the GPU
            by gpu runs, so that one decoder at most is on the GPU.
        less_memory: the mode an out-of-memory error suggests, or "" when none uses less.
        graphed: the stages whose forward (the prior transformer's, the decoder UNet's) may replay CUDA graphs:
            only those whose weights stay at one place on the device between runs and during the forward.
    """

    name: str
    help: str
    pipelines: str = PLACED
    parked_prior_models: tuple[str, ...] = ()
    decoder_placement: str = ""
    image_encoder: str = PARKED
    depth_estimator: str = PARKED
    sets_aside_other_decoders: bool = True
    less_memory: str = ""
    graphed: tuple[str, ...] = ()

    @property
    def decoder_mode(self) -> str:
        """The memory mode of a decoder's cache key."""
        return self.decoder_placement or self.name


MEMORY_MODES: dict[str, MemoryMode] = {
    mode.name: mode
    for mode in (
        MemoryMode(
            "gpu",
            "the prior and every decoder used so far stay on the GPU (fastest)",
            depth_estimator=PLACED,
            sets_aside_other_decoders=False,
            less_memory=MODEL_OFFLOAD,
            graphed=(PRIOR_ROLE, DECODER_ROLE),
        ),
        MemoryMode(
            "prior_offload",
            "the decoder in use stays on the GPU; the prior's text encoder and transformer visit it for the prior "
            "stage only",
            parked_prior_models=("text_encoder", "prior"),
            decoder_placement="gpu",
            less_memory=MODEL_OFFLOAD,
            graphed=(DECODER_ROLE,),
        ),
        MemoryMode(
            MODEL_OFFLOAD,
            "each model is on the GPU only while it runs (least memory)",
            pipelines=MODEL_OFFLOAD,
        ),
        # Not suggested on out of memory: at 768x768 on an H200 it peaked higher than model_offload (diffusers
        # keeps the prior on the GPU in that mode) and ran 6x slower (BENCHMARKS.md).
        MemoryMode(
            SEQUENTIAL_OFFLOAD,
            "one layer at a time on the GPU (slowest)",
            pipelines=SEQUENTIAL_OFFLOAD,
            image_encoder=SEQUENTIAL_OFFLOAD,
        ),
    )
}
# A run on the CPU: the models are placed there, and nothing is parked, set aside or graphed.
CPU = MemoryMode(
    "none", "a run on the CPU", image_encoder=PLACED, depth_estimator=PLACED, sets_aside_other_decoders=False
)


def memory_mode(name: str) -> MemoryMode:
    """The table entry of ``name``: one of ``MEMORY_MODES``, or "none" (``CPU``)."""
    return CPU if name == CPU.name else MEMORY_MODES[name]


def markdown_table() -> str:
    """docs/hardware.md's table of the memory modes, from ``MEMORY_MODES``."""

    def cell(values: tuple[str, ...] | str) -> str:
        return ", ".join(values) if isinstance(values, tuple) else values

    rows = [
        "| `memory_mode` | what it does | prior and decoders | prior models parked | image encoder | depth_model | "
        "other decoders set aside | `cuda_graphs` replays | out of memory, try |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MEMORY_MODES.values():
        rows.append(
            f"| {mode.name} | {mode.help} | {mode.pipelines} | {cell(mode.parked_prior_models) or 'none'} | "
            f"{mode.image_encoder} | {mode.depth_estimator} | {'yes' if mode.sets_aside_other_decoders else 'no'} | "
            f"{cell(mode.graphed) or 'nothing'} | {mode.less_memory or 'fewer images or a smaller size'} |"
        )
    return "\n".join(rows)
