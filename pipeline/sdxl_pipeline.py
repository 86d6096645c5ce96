"""The diffusers pipeline class Picture Book runs, with per-request IP-Adapter embeddings that stay per request."""

from __future__ import annotations

from diffusers import StableDiffusionXLControlNetPipeline


class PictureBookPipeline(StableDiffusionXLControlNetPipeline):
    """StableDiffusionXLControlNetPipeline whose `ip_adapter_image_embeds` are already one row per batch item.

    diffusers 0.42.1 repeats the given embeddings `batch_size` times (it assumes one embedding shared by the whole
    batch), so with B requests the UNet receives B*B rows and its attention view folds two requests' image tokens into
    one row: batch-mates leak into each other's pages (cf. diffusers issue #9813). Here each tensor arrives as
    (2B, images, tokens, width), negatives first, and is used exactly as given.
    """

    def prepare_ip_adapter_image_embeds(
        self, ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_classifier_free_guidance
    ):
        if ip_adapter_image_embeds is None:
            return super().prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_classifier_free_guidance
            )
        prepared = []
        for embeds in ip_adapter_image_embeds:
            if not do_classifier_free_guidance:
                embeds = embeds.chunk(2)[1]  # positives only
            prepared.append(embeds.to(device=device))
        return prepared
