"""LoRA weights for the decoder's UNet and the prior transformer.

A LoRA changes each layer it targets, a linear layer of weight W (out x in), into W + scale x (alpha / rank) x
up @ down, where down is (rank x in) and up is (out x rank); alpha / rank is 1 where the file gives no alpha.
Files are read in two formats, told apart by their keys:

- diffusers' attention-processor format, as ``save_attn_procs`` wrote it and as the Kandinsky 2.2 LoRA training
  scripts (diffusers' ``train_text_to_image_lora_decoder.py`` and ``train_text_to_image_lora_prior.py``) still
  write it: ``<attention>.processor.<layer>_lora.<down|up>.weight`` for the layers to_q, to_k, to_v, to_out
  (the attention's ``to_out.0``), add_k_proj and add_v_proj. diffusers (0.40.0 to 0.42.1) no longer loads these:
  their processor classes are empty and the Kandinsky pipelines have no LoRA loader. Their keys are renamed here.
- the PEFT format diffusers writes today: ``<layer>.lora_A.weight`` (down) and ``<layer>.lora_B.weight`` (up),
  with ``<layer>.alpha`` where the file gives one. diffusers (0.35 and later: ``save_lora_adapter``,
  ``save_lora_weights``) writes the adapter's PEFT configuration in the file's metadata instead
  (``lora_adapter_metadata``: ``lora_alpha``, ``alpha_pattern``, ``use_rslora``, prefixed with ``unet.`` or
  ``prior.`` by a pipeline's save); its alphas are read from there, an ``alpha`` key winning.

Keys may start with ``unet.`` (the decoder's UNet) or ``prior.`` (the prior transformer); without a prefix, the
model whose layers the keys name takes them. One file may hold LoRAs for both.

A LoRA is applied through diffusers' PEFT integration (``add_adapter``, ``set_adapters``, ``delete_adapters``,
``unload_lora``), unmerged: PEFT adds each layer's ``scale x (alpha / rank) x up(down(x))`` to its output, which is
the output of the merged weight up to rounding, and a model left without LoRAs gets its own layers back, so
its pictures are those of a model that never had any. Each file is one adapter, named after the file's identity,
so a run with the same files changes only their scales, and a model is never loaded again for a LoRA.
"""

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import safe_open

from . import graphs
from .errors import ModelLoadError
from .hub import (
    _PICKLES,
    choose_weights_file,
    fetch_weights_file,
    first_line,
    is_folder_name,
    parse_model_name,
)

PARAMETER = "lora"
DECODER = "decoder"
PRIOR = "prior"
# What each model is called in messages and in the metadata.
MODEL_NAMES = {DECODER: "the decoder's UNet", PRIOR: "the prior transformer"}
_PREFIXES = {"unet": DECODER, "prior": PRIOR}
# diffusers' name for LoRA weights (save_attn_procs, save_lora_weights): chosen where a folder holds other files.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
_ATTENTION_PROCESSOR = re.compile(
    r"(?P<attention>.+)\.processor\.(?P<layer>to_q|to_k|to_v|to_out|add_k_proj|add_v_proj)_lora\.(?P<factor>down|up)"
    r"\.weight"
)
_PEFT = re.compile(r"(?P<layer>.+)\.lora_(?P<factor>[AB])\.weight")
_ALPHA = re.compile(r"(?P<layer>.+)\.alpha")
_FACTORS = {"down": "down", "up": "up", "A": "down", "B": "up"}
_FORMATS = (
    "diffusers' attention-processor format (keys such as 'down_blocks.1.attentions.0.processor.to_q_lora.down.weight')"
    " or the PEFT format (keys such as 'unet.down_blocks.1.attentions.0.to_q.lora_A.weight')"
)


@dataclass
class Factors:
    """One layer's LoRA in a file: the keys of its down (rank x in) and up (out x rank) matrices, their shapes, and
    its alpha: the number that, divided by the rank, scales up @ down (the rank itself where the file gives none;
    for an rsLoRA, alpha x sqrt(rank), so that the quotient is rsLoRA's alpha / sqrt(rank))."""

    down: str = ""
    up: str = ""
    down_shape: tuple[int, ...] = ()
    up_shape: tuple[int, ...] = ()
    alpha: float = 0.0

    @property
    def rank(self) -> int:
        return self.down_shape[0]


@dataclass(frozen=True)
class LoraFile:
    """One entry of ``lora``, read: the entry as given, its safetensors file, its scale, the name of its adapter
    (from the file's path, size, times and inode: the same file gives the same name), and its layers by
    model: for each of ``DECODER`` and ``PRIOR`` it changes, or for ``None`` when the keys do not say which,
    the layers' paths in the model and their ``Factors``."""

    entry: str
    path: Path
    scale: float
    adapter: str
    layers: dict[str | None, dict[str, Factors]] = field(default_factory=dict)


def read_loras(entries: Iterable[str], scales: Iterable[float]) -> tuple[LoraFile, ...]:
    """Find each entry of ``lora`` (``find_file``) and read its keys (``read_keys``); no weight is loaded yet.

    Raises ``ModelLoadError`` naming ``lora`` and the entry: a file, folder or repo not found, a pickle, no
    safetensors file or several, a file that is not safetensors, or keys in no known format.
    """
    loras = []
    for entry, scale in zip(entries, scales, strict=True):
        path = find_file(entry)
        status = path.stat()
        # A file rewritten in place, or replaced by a copy that keeps its modification time (cp -p, rsync,
        # unzip), changes its status-change time or its inode, which no tool sets back.
        identity = f"{path.resolve()}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}:{status.st_ino}"
        adapter = "lora_" + hashlib.sha256(identity.encode()).hexdigest()[:16]
        loras.append(LoraFile(entry, path, scale, adapter, read_keys(entry, path)))
    return tuple(loras)


def find_file(entry: str) -> Path:
    """The safetensors file an entry of ``lora`` names: a file; the one at the root of a local folder or a hub
    repo (``owner/name``, ``owner/name@revision``), ``pytorch_lora_weights.safetensors`` where it holds others.
    A hub repo's file comes from the Hugging Face cache, or is downloaded (``hub.fetch_weights_file``)."""
    path = Path(entry).expanduser()
    if path.is_file():
        if path.suffix in _PICKLES:
            raise ModelLoadError(
                f"{PARAMETER}: {entry!r} is a pickle file, which the task never loads (unpickling can run code); "
                "accepted: a .safetensors file."
            )
        return path
    if path.is_dir():
        names = [child.name for child in path.iterdir() if child.is_file()]
        return path / choose_weights_file(names, PARAMETER, f"folder {entry!r}", LORA_WEIGHTS)
    if is_folder_name(entry) or path.suffix in (".safetensors", *_PICKLES):
        raise ModelLoadError(
            f"{PARAMETER}: {entry!r} not found; accepted: a local .safetensors file, a local folder or a Hugging "
            "Face hub repo (owner/name, or owner/name@revision) holding one."
        )
    return fetch_weights_file(parse_model_name(entry, PARAMETER), PARAMETER, LORA_WEIGHTS)


def read_keys(entry: str, path: Path) -> dict[str | None, dict[str, Factors]]:
    """The layers a LoRA file changes, by model (``LoraFile.layers``), from its keys and shapes alone.

    Raises ``ModelLoadError`` naming ``lora`` and the entry: a file safetensors cannot open, a key in no known
    format (the first one is named), a layer with a down or an up matrix but not both, or with matrices whose
    ranks differ.
    """
    try:
        with safe_open(path, framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118
            alpha_values = {key: weights.get_tensor(key) for key in shapes if _ALPHA.fullmatch(key)}
            metadata = weights.metadata() or {}
    except Exception as error:
        raise ModelLoadError(
            f"{PARAMETER}: {entry!r} is not a readable safetensors file: {first_line(error)}"
        ) from error
    if not shapes:
        raise ModelLoadError(f"{PARAMETER}: {entry!r} holds no weights; accepted: LoRA weights in {_FORMATS}.")
    configuration = _adapter_configuration(entry, metadata)
    layers: dict[str | None, dict[str, Factors]] = {}
    alphas: dict[tuple[str | None, str], float] = {}
    for key in sorted(shapes):
        model, _, rest = key.partition(".")
        target = _PREFIXES.get(model)
        if target is None:
            rest = key
        found = _layer_of(rest)
        if found is None:
            raise ModelLoadError(
                f"{PARAMETER}: {entry!r} holds key {key!r}, in no known format; accepted: LoRA weights in {_FORMATS}."
            )
        layer, factor = found
        if factor == "alpha":
            if alpha_values[key].numel() != 1:
                raise ModelLoadError(
                    f"{PARAMETER}: {entry!r}: key {key!r} holds {alpha_values[key].numel()} numbers; accepted: an "
                    "alpha of one number."
                )
            alphas[target, layer] = float(alpha_values[key].item())
            continue
        factors = layers.setdefault(target, {}).setdefault(layer, Factors())
        given = factors.down if factor == "down" else factors.up
        if given:
            raise ModelLoadError(
                f"{PARAMETER}: {entry!r} holds the {factor} matrix of layer {layer!r} twice, as {given!r} and {key!r}; "
                "accepted: one key per matrix."
            )
        if factor == "down":
            factors.down, factors.down_shape = key, shapes[key]
        else:
            factors.up, factors.up_shape = key, shapes[key]
    for target, target_layers in layers.items():
        for layer, factors in target_layers.items():
            if not factors.down or not factors.up:
                lacking = " and ".join(name for name, key in (("down", factors.down), ("up", factors.up)) if not key)
                raise ModelLoadError(
                    f"{PARAMETER}: {entry!r} lacks the {lacking} matrix of layer {layer!r}; accepted: a down and an "
                    "up matrix for every layer."
                )
            if (
                len(factors.down_shape) != 2
                or len(factors.up_shape) != 2
                or factors.down_shape[0] != factors.up_shape[1]
            ):
                raise ModelLoadError(
                    f"{PARAMETER}: {entry!r}: layer {layer!r} has a down matrix of shape {factors.down_shape} and an "
                    f"up matrix of shape {factors.up_shape}; accepted: (rank, in) and (out, rank), of one rank."
                )
            given = alphas.get((target, layer))
            factors.alpha = (
                given if given is not None else _configured_alpha(configuration, target, layer, factors.rank)
            )
    unpaired = sorted(
        f"{target}.{layer}" if target else layer for target, layer in alphas if layer not in layers.get(target, {})
    )
    if unpaired:
        raise ModelLoadError(
            f"{PARAMETER}: {entry!r} holds an alpha for layer {unpaired[0]!r} but no matrices for it; accepted: an "
            "alpha beside a layer's down and up matrices."
        )
    return layers


def _adapter_configuration(entry: str, metadata: Mapping[str, str]) -> dict:
    """The PEFT configuration diffusers writes in a LoRA file's metadata (``lora_adapter_metadata``), or {}."""
    text = metadata.get("lora_adapter_metadata")
    if not text:
        return {}
    try:
        configuration = json.loads(text)
    except ValueError as error:
        raise ModelLoadError(
            f"{PARAMETER}: {entry!r} has metadata 'lora_adapter_metadata' that is not JSON ({error}); accepted: the "
            "PEFT configuration diffusers writes there."
        ) from error
    if not isinstance(configuration, dict):
        raise ModelLoadError(
            f"{PARAMETER}: {entry!r} has metadata 'lora_adapter_metadata' that is not a JSON object; accepted: the "
            "PEFT configuration diffusers writes there."
        )
    return configuration


def _configured_alpha(configuration: Mapping, target: str | None, layer: str, rank: int) -> float:
    """A layer's alpha (``Factors.alpha``) from the adapter's PEFT configuration: its ``alpha_pattern`` entry (whose
    keys match the end of a layer's path, as PEFT's ``get_pattern_key`` matches them), else ``lora_alpha``, else
    the rank; the keys may carry the model's prefix (``unet.``, ``prior.``), as a pipeline's save writes them."""
    prefixes = [f"{name}." for name, model in _PREFIXES.items() if model == target] + [""]

    def setting(name: str) -> object:
        return next((configuration[p + name] for p in prefixes if p + name in configuration), None)

    pattern = setting("alpha_pattern") or {}
    alpha = next(
        (value for key, value in pattern.items() if re.fullmatch(rf"(.*\.)?({key})", layer)),
        setting("lora_alpha"),
    )
    if alpha is None:
        return float(rank)
    return float(alpha) * math.sqrt(rank) if setting("use_rslora") else float(alpha)


def _layer_of(key: str) -> tuple[str, str] | None:
    """The layer path a key (without its model prefix) belongs to, in the model's own names, and what it holds
    ("down", "up" or "alpha"); None for a key in no known format."""
    match = _ATTENTION_PROCESSOR.fullmatch(key)
    if match:
        layer = "to_out.0" if match["layer"] == "to_out" else match["layer"]
        return f"{match['attention']}.{layer}", _FACTORS[match["factor"]]
    match = _PEFT.fullmatch(key)
    if match:
        return match["layer"], _FACTORS[match["factor"]]
    match = _ALPHA.fullmatch(key)
    if match:
        return match["layer"], "alpha"
    return None


def assign_models(
    loras: Iterable[LoraFile], models: Mapping[str, torch.nn.Module], described: Mapping[str, str]
) -> dict[str, list[tuple[LoraFile, dict[str, Factors]]]]:
    """For each model (``DECODER``, ``PRIOR``), the LoRAs that change it and the layers they change there, after
    checking that every layer fits: that the model has it, that it is a linear layer, and that its shape matches.

    Layers whose keys name no model go to the model that has all of them (the decoder's when both do).
    ``described``: each model as messages name it (say, "the decoder of inpaint (owner/name)").

    Raises ``ModelLoadError`` naming ``lora``, the entry, the model, and the first key or shape that does not fit.
    """
    assigned: dict[str, list[tuple[LoraFile, dict[str, Factors]]]] = {DECODER: [], PRIOR: []}
    for lora in loras:
        by_model: dict[str, dict[str, Factors]] = {}
        for target, layers in lora.layers.items():
            if target is None:
                target = _owner(models, layers)
            problem = _misfit(models[target], layers)
            if problem is not None:
                raise ModelLoadError(
                    f"{PARAMETER}: {lora.entry!r} does not fit {described[target]}: {problem}; accepted: LoRA weights "
                    f"trained for Kandinsky 2.2's {'decoder' if target == DECODER else 'prior'}."
                )
            # Keys with and without the model's prefix in one file: one adapter, whose layers are all of them.
            merged = by_model.setdefault(target, {})
            twice = next((layer for layer in layers if layer in merged), None)
            if twice is not None:
                raise ModelLoadError(
                    f"{PARAMETER}: {lora.entry!r} holds layer {twice!r} of {described[target]} twice, as "
                    f"{merged[twice].down!r} and {layers[twice].down!r}; accepted: one key per matrix."
                )
            merged.update(layers)
        for target, layers in by_model.items():
            assigned[target].append((lora, layers))
    return assigned


def _owner(models: Mapping[str, torch.nn.Module], layers: Mapping[str, Factors]) -> str:
    """The model that unprefixed ``layers`` belong to: the first that they all fit, else the first that has their
    first layer (whose misfit is then said), else the decoder."""
    for name, model in models.items():
        if _misfit(model, layers) is None:
            return name
    first = next(iter(layers))
    for name, model in models.items():
        try:
            model.get_submodule(first)
        except AttributeError:
            continue
        return name
    return DECODER


def _misfit(model: torch.nn.Module, layers: Mapping[str, Factors]) -> str | None:
    """Why ``layers`` do not fit ``model`` (the first layer that does not), or None when they all do."""
    for layer, factors in layers.items():
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            return f"key {factors.down!r} names layer {layer!r}, which it does not have"
        module = getattr(module, "base_layer", module)
        if not isinstance(module, torch.nn.Linear):
            return f"key {factors.down!r} names layer {layer!r}, a {type(module).__name__}, not a linear layer"
        expected = {
            factors.down: (factors.down_shape[1], module.in_features),
            factors.up: (factors.up_shape[0], module.out_features),
        }
        for key, (given, wanted) in expected.items():
            if given != wanted:
                side = "inputs" if key == factors.down else "outputs"
                shape = factors.down_shape if key == factors.down else factors.up_shape
                return f"key {key!r} has shape {shape}, for {given} {side}, where layer {layer!r} has {wanted} {side}"
    return None


def apply(
    model: torch.nn.Module,
    loras: list[tuple[LoraFile, dict[str, Factors]]],
    device: torch.device | str,
    dtype: torch.dtype,
) -> bool:
    """Give ``model`` exactly the LoRAs of ``loras`` (as ``assign_models`` gives them for it), with their scales.

    Adapters no longer asked for are deleted (with none left, the model gets its own layers back:
    ``unload_lora``), new ones are added from their files, and every one's scale is set (a file given twice adds
    its scales). A new adapter's weights are loaded onto ``device`` in ``dtype``: where the model computes, or
    for a model offloaded whole, where it waits, with which it then moves. The graphs of a model whose LoRAs
    change are dropped (``graphs.drop``): they replayed the old ones.

    Returns whether anything changed.
    """
    scales: dict[str, float] = {}
    wanted: dict[str, tuple[LoraFile, dict[str, Factors]]] = {}
    for lora, layers in loras:
        scales[lora.adapter] = scales.get(lora.adapter, 0.0) + lora.scale
        wanted.setdefault(lora.adapter, (lora, layers))
    present = list(getattr(model, "peft_config", {}) or {})
    gone = [name for name in present if name not in wanted]
    new = [name for name in wanted if name not in present]
    changed = bool(gone or new)
    if gone:
        if len(gone) == len(present):
            model.unload_lora()
        else:
            model.delete_adapters(gone)
    for name in new:
        _add(model, name, *wanted[name], device, dtype)
    if wanted:
        before = _scalings(model)
        model.set_adapters(list(wanted), [scales[name] for name in wanted])
        changed = changed or _scalings(model) != before
    if changed:
        graphs.drop([model])
    return changed


def _scalings(model: torch.nn.Module) -> list[tuple[str, dict, list]]:
    """Every LoRA layer's scalings and active adapters: what ``set_adapters`` sets."""
    return [
        (name, dict(module.scaling), list(module.active_adapters))
        for name, module in model.named_modules()
        if hasattr(module, "scaling") and hasattr(module, "active_adapters")
    ]


def _add(
    model: torch.nn.Module,
    name: str,
    lora: LoraFile,
    layers: Mapping[str, Factors],
    device: torch.device | str,
    dtype: torch.dtype,
) -> None:
    """Add the adapter ``name`` holding ``lora``'s ``layers`` to ``model``, its weights on ``device`` in ``dtype``.

    The adapter's layers are made by PEFT (through diffusers' ``add_adapter``), with each layer's rank and alpha;
    their weights are then replaced by the file's (``load_state_dict(assign=True)``): PEFT would otherwise move them
    to where the layer's own weight is, which for a model parked in CPU memory or offloaded layer by layer is not
    where the layer computes.
    """
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    with safe_open(lora.path, framework="pt") as weights:
        for layer, factors in layers.items():
            ranks[layer] = factors.rank
            alphas[layer] = factors.alpha
            for matrix, key in (("lora_A", factors.down), ("lora_B", factors.up)):
                # A copy: safetensors maps the file, and a tensor already in ``dtype`` on the CPU would keep reading
                # it (a file rewritten or cut later would change the weights, or end the process).
                tensor = weights.get_tensor(key)
                state[f"{layer}.{matrix}.{name}.weight"] = tensor.to(device=device, dtype=dtype, copy=True)
    first = next(iter(layers))
    config = LoraConfig(
        r=ranks[first],
        lora_alpha=alphas[first],
        target_modules=list(layers),
        # By the layers' full paths: PEFT matches a pattern's key against the end of a layer's path.
        rank_pattern=ranks,
        alpha_pattern=alphas,
    )
    model.add_adapter(config, adapter_name=name)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        model.delete_adapters(name)
        raise ModelLoadError(
            f"{PARAMETER}: {lora.entry!r}: PEFT made no place for key {result.unexpected_keys[0]!r}; accepted: LoRA "
            "weights of linear layers."
        )
