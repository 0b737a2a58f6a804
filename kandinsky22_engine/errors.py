"""Every error the engine raises to the user, at the bottom of the engine's layers: each message names the parameter
or input at fault, the value received and what is accepted, or what to try."""


class SettingsError(ValueError):
    """One or more parameters were refused; the message names each one and what it accepts."""


class InputError(ValueError):
    """An input that a mode needs is missing or unusable; the message names it."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the parameter, the model and the reason."""


class HubUnreachable(ModelLoadError):
    """A model missing from the local Hugging Face cache could not be fetched: HF_HUB_OFFLINE is set, or the hub
    cannot be reached from this machine; the message names the parameter and the model."""


class GenerationStopped(RuntimeError):
    """The user asked to stop; the run ended after the current denoising step."""


class GenerationOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message says what was asked and what to try."""


class CompileFailed(RuntimeError):
    """torch.compile could not compile the UNet on this machine; the message says how to run without it."""


class GraphCaptureFailed(RuntimeError):
    """A forward pass could not be captured into a CUDA graph; the message says which and how to run without."""


class NotFinite(RuntimeError):
    """A stage produced values that are not finite (NaN or infinity); the message says which and what to try."""
