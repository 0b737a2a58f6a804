"""diffusers' own combined pipelines over stages already loaded, to compare the engine with them."""

from diffusers import DiffusionPipeline, KandinskyV22CombinedPipeline, KandinskyV22PriorPipeline


def combine(
    prior: KandinskyV22PriorPipeline,
    decoder: DiffusionPipeline,
    combined_class: type[DiffusionPipeline] = KandinskyV22CombinedPipeline,
) -> DiffusionPipeline:
    """A combined pipeline (text2img, img2img or inpaint, as ``combined_class`` says) over the same models."""
    combined = combined_class(
        unet=decoder.unet,
        scheduler=decoder.scheduler,
        movq=decoder.movq,
        prior_prior=prior.prior,
        prior_image_encoder=prior.image_encoder,
        prior_text_encoder=prior.text_encoder,
        prior_tokenizer=prior.tokenizer,
        prior_scheduler=prior.scheduler,
        prior_image_processor=prior.image_processor,
    )
    combined.set_progress_bar_config(disable=True)
    return combined
