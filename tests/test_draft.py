"""`quality: draft` on the tiny profile: the few-step LoRA loaded once by the one loading path, switched per
diffusion call, never in the same call as final pages; no `quality` draws exactly what it drew before drafts."""

import pytest
import torch
from safetensors import safe_open

from pipeline import ModelPaths, PageRequest, Quality, load_page_generator
from pipeline.sources import DRAFT_ADAPTER, DRAFT_LORA_WEIGHTS, MODEL_REPOS, PROFILES
from pipeline.tiny import DRAFT_LORA_TARGETS, TINY_DRAFT_RANK
from serving.wire import PageJob, draw_jobs
from testkit.pictures import picture, psnr

# The thresholds of tests/test_pipeline.py (measured there): within 60 dB is the same page, below 25 dB another one.
SEEN_AT_LEAST_DB = 60.0
CHANGED_BELOW_DB = 25.0


def page(generator, request):
    [result] = generator.generate([request])
    assert result.ok, result.error
    return result


def continuation(prompt="two friends talk in a garden", prev=1, characters=(2,), seed=42, **kw):
    return PageRequest(
        prompt=prompt, prev_frame=picture(prev), characters=tuple(picture(c) for c in characters), seed=seed, **kw
    )


def draft(**kw):
    return continuation(quality=Quality.draft, **kw)


def lora_tensors(generator) -> dict[str, torch.Tensor]:
    return {name: p for name, p in generator.pipe.unet.named_parameters() if "lora_" in name}


@pytest.fixture(scope="module")
def without_drafts(tiny_dir, tiny_settings):
    """The service as it was before drafts: no LoRA in memory (PICTUREBOOK_DRAFT=false)."""
    return load_page_generator(ModelPaths.under(tiny_dir), tiny_settings.model_copy(update={"draft": False}))


def test_the_tiny_lora_has_the_real_layout_and_non_zero_weights(tiny_dir):
    path = tiny_dir / MODEL_REPOS["draft_lora"].folder / DRAFT_LORA_WEIGHTS
    assert MODEL_REPOS["draft_lora"].include == (DRAFT_LORA_WEIGHTS,) and path.suffix == ".safetensors"
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        some = f.get_tensor("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight")
    assert some.shape[1] == TINY_DRAFT_RANK and some.abs().min() > 0
    adapted = {k.removeprefix("unet.").rsplit(".lora_", 1)[0] for k in keys}
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert {t for t in DRAFT_LORA_TARGETS if any(a.endswith(t) for a in adapted)} >= {
        "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "time_emb_proj",
    }  # fmt: skip
    assert len(keys) == 2 * len(adapted)


def test_draft_and_final_pages_of_one_request_differ_and_each_reproduces(generator):
    final, again_final = page(generator, continuation()), page(generator, continuation(quality=Quality.final))
    sketch, again_sketch = page(generator, draft()), page(generator, draft())
    assert psnr(final.image, again_final.image) == float("inf")
    assert psnr(sketch.image, again_sketch.image) == float("inf")
    assert psnr(final.image, sketch.image) < CHANGED_BELOW_DB
    assert sketch.image.size == final.image.size == (256, 256)


def test_draft_uses_the_lora_steps_scheduler_and_guidance(generator):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    spec = PROFILES[generator.settings.profile]
    resolved = generator.resolve(draft())
    assert (resolved.steps, resolved.guidance_scale) == (spec.draft_steps, spec.draft_guidance_scale)
    assert resolved.guidance_scale > 1  # classifier-free guidance: the negative prompt is still read
    assert generator.resolve(draft(steps=3)).steps == 3  # a request's own settings still win
    page(generator, draft())
    assert isinstance(generator.pipe.scheduler, DDIMScheduler)
    assert generator.pipe.scheduler.config.timestep_spacing == "trailing"
    page(generator, continuation())
    assert type(generator.pipe.scheduler) is EulerDiscreteScheduler  # the base's own, as before drafts
    assert generator.pipe.scheduler is generator.schedulers[Quality.final]


def test_the_negative_prompt_still_acts_in_draft(generator):
    plain = page(generator, draft()).image
    avoided = page(generator, draft(negative_prompt="a dark and stormy night")).image
    assert psnr(plain, avoided) < CHANGED_BELOW_DB


def test_the_lora_itself_changes_a_draft(generator):
    """Same steps, scheduler and guidance, the LoRA off: another page, so the switch is not a no-op."""
    request = generator.resolve(draft())
    generator.use_quality(Quality.draft)
    with_lora = generator.generate_group([request])[0].image
    generator.pipe.disable_lora()  # diffusers' own switch (the generator flips the layers themselves)
    try:
        without = generator.generate_group([request])[0].image
    finally:
        generator.pipe.enable_lora()
    assert psnr(with_lora, without) < CHANGED_BELOW_DB


@pytest.mark.parametrize(
    "change",
    [{"seed": 43}, {"prev": 7}, {"characters": (8,)}, {"prompt": "a dragon flies over the castle at night"}],
    ids=["seed", "prev_frame", "characters", "prompt"],
)
def test_each_input_changes_a_draft_page(generator, change):
    """The IP-Adapters (characters, previous page) and the depth ControlNet (previous page) still act with the
    LoRA on."""
    assert psnr(page(generator, draft()).image, page(generator, draft(**change)).image) < CHANGED_BELOW_DB


def test_the_controlnet_acts_in_draft(generator):
    """The same draft with the depth ControlNet's scale at 0: another page (measured 19.0 dB on tiny; a final page
    37.2 dB, 2026-12-01), so the ControlNet still steers the page with the LoRA on."""
    request = draft(characters=())
    steered = page(generator, request).image
    scale = generator.settings.controlnet_scale
    generator.settings.controlnet_scale = 0.0
    try:
        unsteered = page(generator, request).image
    finally:
        generator.settings.controlnet_scale = scale
    assert psnr(steered, unsteered) < CHANGED_BELOW_DB


def test_a_batch_never_mixes_draft_and_final(generator):
    """One step each (`steps` sent, so both qualities share every other part of the group key): only `quality`
    keeps them apart."""
    requests = [
        continuation(seed=1, steps=1),
        draft(seed=2, steps=1),
        continuation(seed=3, steps=1),
        draft(seed=4, steps=1),
    ]
    results = generator.generate(requests)
    assert [r.batch_size for r in results] == [2, 2, 2, 2]  # two diffusion calls: the finals, then the drafts
    for request, result in zip(requests[:2], results):  # and each page is the one it is alone
        assert psnr(page(generator, request).image, result.image) >= SEEN_AT_LEAST_DB


def test_a_batch_of_wire_jobs_of_both_qualities_is_two_calls(generator):
    """The model service's side: one batch of the wire's jobs, as BentoML's batcher hands them over."""
    jobs = [
        PageJob(prompt="a bear", seed=8, steps=1),
        PageJob(prompt="a bear", seed=8, steps=1, quality="draft"),
        PageJob(prompt="an owl", seed=9, steps=1),
        PageJob(prompt="an owl", seed=9, steps=1, quality=Quality.draft),
    ]
    answers = draw_jobs(generator, jobs)
    assert [a.batch_size for a in answers] == [2, 2, 2, 2]
    assert answers[0].img != answers[1].img


def test_the_lora_is_loaded_once_and_only_switched(generator):
    assert generator.drafts and generator.pipe.get_list_adapters() == {"unet": [DRAFT_ADAPTER]}
    before = {name: p.data_ptr() for name, p in lora_tensors(generator).items()}
    assert before  # the LoRA's layers are in the UNet
    for request in (draft(steps=1), continuation(steps=1), draft(steps=1)):
        page(generator, request)
    assert generator.pipe.get_list_adapters() == {"unet": [DRAFT_ADAPTER]}
    assert {name: p.data_ptr() for name, p in lora_tensors(generator).items()} == before  # the same tensors


def test_no_quality_is_the_page_drawn_before_drafts(generator, without_drafts):
    assert not without_drafts.drafts and not lora_tensors(without_drafts)
    page(generator, draft(steps=1))  # the LoRA was on for the last call
    for request in (continuation(), PageRequest(prompt="once upon a time", seed=1, steps=1)):
        assert psnr(page(generator, request).image, page(without_drafts, request).image) == float("inf")


def test_drafts_switched_off_are_refused_naming_quality(without_drafts):
    [refused, drawn] = without_drafts.generate([draft(), continuation(steps=1)])
    assert refused.error.kind == "invalid" and refused.error.message.startswith("quality:")
    assert drawn.ok


def test_a_bad_quality_is_refused_naming_it(generator):
    [refused] = generator.generate([continuation(quality="sketchy")])  # refused before any drawing
    assert refused.error.kind == "invalid" and refused.error.message.startswith("quality:")
