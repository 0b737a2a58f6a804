"""The published repos the task knows, at the bottom of the engine's layers with the errors: the mode table, the
parameters and the hub all name them."""

DEFAULT_DECODER = "kandinsky-community/kandinsky-2-2-decoder"
DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
DEFAULT_INPAINT_DECODER = "kandinsky-community/kandinsky-2-2-decoder-inpaint"
DEFAULT_CONTROLNET_DECODER = "kandinsky-community/kandinsky-2-2-controlnet-depth"
# Known repos whose default branch cannot serve the task, and the revision loaded instead: the ControlNet depth
# repo's main branch holds its weights as pickles only; its safetensors are at its open pull request #5.
PINNED_REVISIONS = {DEFAULT_CONTROLNET_DECODER: "08632524a2b7e3bed39a7901d92cdd07e37544d0"}
