"""The offline `tiny` profile: SDXL's architectures with small random weights, written in the hub layout.

Everything is seeded, so two builds give the same bytes, and the result is read back by the same code that loads
the real models (pipeline.loading). The components keep SDXL's geometry: two text encoders whose hidden states are
concatenated, a text-time UNet, a four-block VAE (8x down-sampling), a ControlNet whose conditioning embedding
down-samples 8x to match, a CLIP vision encoder, and IP-Adapter *plus* resampler checkpoints in the original format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import Profile
from .depth import TinyDPTDepthModel
from .moderation import (
    PROMPT_MODERATION_TEMPLATE,
    SAFE_ANSWER,
    UNSAFE_FIXTURE_ANSWER,
    UNSAFE_FIXTURE_MARKER,
)
from .sources import (
    ADAPTER_SUBFOLDER,
    DRAFT_LORA_WEIGHTS,
    FACE_ADAPTER_WEIGHTS,
    IMAGE_ENCODER_FOLDER,
    MODEL_REPOS,
    PROFILES,
    STYLE_ADAPTER_WEIGHTS,
)

TEXT_WIDTH = 32  # each text encoder; the UNet cross-attends to both concatenated
CROSS_ATTENTION_DIM = 2 * TEXT_WIDTH
TIME_EMBED_DIM = 8
VISION_WIDTH = 32
RESAMPLER_WIDTH = 64  # diffusers derives heads as width // 64
RESAMPLER_QUERIES = 16
RESAMPLER_DEPTH = 4
COMPLETE_MARKER = ".complete"
# Gains on random weights that make each input move the page strongly (see _make_conditioning_strong).
TEXT_TIME_GAIN = 80.0
CROSS_ATTENTION_GAIN = 8.0
FLAGGED_FIXTURE_THRESHOLD = 0.985  # cosine to the fixture above which the tiny checker flags a picture
RESAMPLER_GAIN = 4.0  # the adapters' image projection: characters and the previous page
TINY_DRAFT_RANK = 4


def build_tiny_models(root: Path, seed: int = 0) -> Path:
    """Write every tiny model folder under `root` (idempotent: skipped when already complete)."""

    def write(staging: Path) -> None:
        torch.manual_seed(seed)
        unet = _write_base(staging / MODEL_REPOS["base"].folder)
        _write_controlnet(staging / MODEL_REPOS["controlnet"].folder, unet)
        _write_vae(staging / MODEL_REPOS["vae"].folder)
        _write_ip_adapters(staging / MODEL_REPOS["ip_adapter"].folder, unet)
        _write_draft_lora(staging / MODEL_REPOS["draft_lora"].folder, unet, seed)
        _write_depth(staging / MODEL_REPOS["depth"].folder)
        _write_safety_checker(staging / MODEL_REPOS["safety_checker"].folder)
        write_tiny_translator(staging / MODEL_REPOS["translator"].folder)
        trained_tiny_moderation(staging / MODEL_REPOS["moderation"].folder, seed)

    return build_atomically(root, write, {"profile": "tiny", "seed": seed})


def build_atomically(root: Path, write, marker: dict) -> Path:
    """Run `write(staging)` into a sibling folder, then move it to `root`; skipped when `root` is already complete."""
    root = Path(root)
    if (root / COMPLETE_MARKER).exists():
        return root
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    (staging / COMPLETE_MARKER).write_text(json.dumps(marker))
    # Rename last so a crash mid-build never leaves a folder that looks complete.
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    return root


def _write_tokenizer(folder: Path):
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # A byte-level vocabulary with no merges: every prompt tokenizes offline, one token per character.
    symbols = list(bytes_to_unicode().values())
    vocab_tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab_tokens)}, merges=[], model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _write_base(folder: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _write_tokenizer(folder / "tokenizer")
    text_config = CLIPTextConfig(
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_WIDTH,
    )
    # SDXL base's own scheduler settings.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    _make_conditioning_strong(unet)
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # The VAE comes from its own repository (the fp16-fix one), as with the real base's include patterns.
    shutil.rmtree(folder / "vae")
    return unet


def _make_conditioning_strong(unet) -> None:
    """Random weights barely listen to the prompt (a new prompt moved the page by only ~40 dB PSNR), so a prompt
    leaking between batch-mates could hide inside the tests' margins. Amplify the two paths the text takes into the
    UNet — the pooled embedding into the time embedding, and cross-attention's output — until each input alone moves
    the page below 25 dB (figures in tests/test_pipeline.py)."""
    with torch.no_grad():
        unet.add_embedding.linear_1.weight.mul_(TEXT_TIME_GAIN)
        for name, parameter in unet.named_parameters():
            if name.endswith("attn2.to_out.0.weight"):
                parameter.mul_(CROSS_ATTENTION_GAIN)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
        scaling_factor=0.13025,
        force_upcast=False,
    )


def _write_vae(folder: Path):
    _tiny_vae().save_pretrained(folder, safe_serialization=True)


def _write_controlnet(folder: Path, unet):
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    # ControlNet starts with zero convolutions (a no-op until trained); give them weights so depth conditioning acts.
    with torch.no_grad():
        for parameter in controlnet.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    controlnet.save_pretrained(folder, safe_serialization=True)


def _write_ip_adapters(folder: Path, unet):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=VISION_WIDTH,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=224,
            patch_size=32,
            projection_dim=VISION_WIDTH,
        )
    )
    encoder.save_pretrained(folder / IMAGE_ENCODER_FOLDER, safe_serialization=True)
    for weights in (FACE_ADAPTER_WEIGHTS, STYLE_ADAPTER_WEIGHTS):
        path = folder / ADAPTER_SUBFOLDER / weights
        path.parent.mkdir(parents=True, exist_ok=True)
        state = plus_adapter_state_dict(unet, TINY_ADAPTER, _seeded_normal)
        # A stronger resampler output, so each character picture and the previous page move the page strongly.
        state = {
            key: value * RESAMPLER_GAIN if key.startswith("image_proj.") else value for key, value in state.items()
        }
        save_file(state, str(path))


# The modules the draft LoRA adapts. Hyper-SDXL's file is 787,359,648 bytes; these modules of SDXL's UNet (788 of
# them: LCM-LoRA-SDXL's set) at rank 64 in float32 come to 787,005,440 bytes of tensors, and the 354,208 left are
# 450 bytes a module, a safetensors header of three entries (down, up, alpha) per module. So its layout is inferred
# from its size and the LCM-LoRA convention, not read from the file (no copy of its key list was at hand).
DRAFT_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
)
FULL_SIZE_DRAFT_RANK = 64


def draft_lora_state_dict(unet, rank: int, normal) -> dict[str, torch.Tensor]:
    """A LoRA for `unet` in diffusers' PEFT layout (`unet.<module>.lora_A/lora_B.weight`, no alphas: scale 1), one
    pair per module named by DRAFT_LORA_TARGETS. `normal(name, shape, std)` gives each tensor; both factors are
    non-zero (a trained LoRA's are), so switching it on changes the page."""
    state = {}
    for name, module in unet.named_modules():
        if not any(name == t or name.endswith("." + t) for t in DRAFT_LORA_TARGETS):
            continue
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
            fan_in = module.in_features
        elif isinstance(module, torch.nn.Conv2d):
            height, width = module.kernel_size
            down, up = (rank, module.in_channels, height, width), (module.out_channels, rank, 1, 1)
            fan_in = module.in_channels * height * width
        else:
            continue
        for factor, shape, std in (("lora_A", down, fan_in**-0.5), ("lora_B", up, rank**-0.5 * 0.05)):
            key = f"unet.{name}.{factor}.weight"
            state[key] = normal(key, shape, std)
    return state


def _write_draft_lora(folder: Path, unet, seed: int = 0) -> None:
    # Its own generator: the models written after it draw the same numbers as before the LoRA joined the set.
    generator = torch.Generator().manual_seed(seed)

    def normal(name, shape, std):
        return torch.randn(*shape, generator=generator) * std

    folder.mkdir(parents=True, exist_ok=True)
    save_file(draft_lora_state_dict(unet, TINY_DRAFT_RANK, normal), str(folder / DRAFT_LORA_WEIGHTS))


@dataclass(frozen=True)
class PlusAdapterShape:
    """What sizes an IP-Adapter *plus* checkpoint: its perceiver resampler and the UNet it feeds."""

    vision_width: int  # hidden size of the image encoder, whose penultimate hidden states the resampler reads
    width: int  # resampler width; diffusers derives its heads as width // 64
    queries: int  # image tokens handed to the UNet
    depth: int
    kv_std: float  # spread of the random K/V projections (large enough that an adapter visibly acts)


TINY_ADAPTER = PlusAdapterShape(
    vision_width=VISION_WIDTH, width=RESAMPLER_WIDTH, queries=RESAMPLER_QUERIES, depth=RESAMPLER_DEPTH, kv_std=0.2
)


def _seeded_normal(name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    return torch.randn(*shape) * std  # from the global generator, seeded once per build


def plus_adapter_state_dict(unet, shape: PlusAdapterShape, normal) -> dict[str, torch.Tensor]:
    """An IP-Adapter *plus* checkpoint in the original (h94) key format: a perceiver resampler + K/V projections.

    `normal(name, shape, std)` gives each random tensor; the key layout follows the reference Resampler
    (PerceiverAttention + FeedForward, no biases inside the layers) that diffusers converts on load.
    """
    width, inner = shape.width, shape.width
    cross_attention_dim = unet.config.cross_attention_dim
    state = {"image_proj.latents": normal("image_proj.latents", (1, shape.queries, width), width**-0.5)}
    state["image_proj.proj_in.weight"] = normal("image_proj.proj_in.weight", (width, shape.vision_width), 0.05)
    state["image_proj.proj_in.bias"] = torch.zeros(width)
    state["image_proj.proj_out.weight"] = normal("image_proj.proj_out.weight", (cross_attention_dim, width), 0.05)
    state["image_proj.proj_out.bias"] = torch.zeros(cross_attention_dim)
    state["image_proj.norm_out.weight"] = torch.ones(cross_attention_dim)
    state["image_proj.norm_out.bias"] = torch.zeros(cross_attention_dim)
    for i in range(shape.depth):
        layer = f"image_proj.layers.{i}"
        for norm in ("norm1", "norm2"):
            state[f"{layer}.0.{norm}.weight"] = torch.ones(width)
            state[f"{layer}.0.{norm}.bias"] = torch.zeros(width)
        for key, size in (("0.to_q", (inner, width)), ("0.to_kv", (2 * inner, width)), ("0.to_out", (width, inner))):
            state[f"{layer}.{key}.weight"] = normal(f"{layer}.{key}.weight", size, 0.05)
        state[f"{layer}.1.0.weight"] = torch.ones(width)
        state[f"{layer}.1.0.bias"] = torch.zeros(width)
        state[f"{layer}.1.1.weight"] = normal(f"{layer}.1.1.weight", (4 * width, width), 0.05)
        state[f"{layer}.1.3.weight"] = normal(f"{layer}.1.3.weight", (width, 4 * width), 0.05)

    # K/V projections for every cross-attention layer, numbered as the original repo numbers them: over all
    # attention processors in order, so cross-attention layers get the odd numbers 1, 3, 5, ...
    block_widths = unet.config.block_out_channels
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = block_widths[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(block_widths))[int(name.split(".")[1])]
        else:
            hidden = block_widths[int(name.split(".")[1])]
        for projection in ("to_k_ip", "to_v_ip"):
            key = f"ip_adapter.{key_id}.{projection}.weight"
            state[key] = normal(key, (hidden, cross_attention_dim), shape.kv_std)
        key_id += 2
    return state


def _write_safety_checker(folder: Path) -> None:
    """diffusers' StableDiffusionSafetyChecker with a tiny CLIP, so the real check runs in every test. Its first
    concept is the embedding of `flagged_fixture()` with a threshold it alone passes (cosine 1.0; the tests'
    pictures and tiny pages stay below 0.96), and the other concepts can never match."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from .safety import flagged_fixture

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2},
        vision_config={
            "hidden_size": VISION_WIDTH,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=VISION_WIDTH,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    extractor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    with torch.no_grad():
        pixels = extractor([flagged_fixture()], return_tensors="pt").pixel_values
        fixture = checker.visual_projection(checker.vision_model(pixels)[1])
        checker.concept_embeds[0] = fixture[0]
        checker.concept_embeds_weights.fill_(2.0)  # a cosine never exceeds 1: these concepts never match
        checker.concept_embeds_weights[0] = FLAGGED_FIXTURE_THRESHOLD
        checker.special_care_embeds_weights.fill_(2.0)
    checker.save_pretrained(folder, safe_serialization=True)
    extractor.save_pretrained(folder)


# Our own lines, for the tiny translator's sentencepiece vocabularies (the source reads both languages).
TRANSLATOR_ENGLISH = (
    "Two characters talk in a garden, character 1 on the left, character 2 on the right.",
    "The little fox finds a red kite in the forest.",
    "A girl and her dog walk home under the moon.",
    "The rabbit reads a book by the river on a sunny day.",
)
TRANSLATOR_CHINESE = (
    "两个角色在花园中交谈，左边是角色1，右边是角色2",
    "小狐狸在森林里找到一只红色的风筝。",
    "女孩和她的狗在月光下走回家。",
    "晴天，兔子在河边读书。",
)
TRANSLATOR_WIDTH = 32


def _train_spm(lines, vocab_size: int, byte_fallback: bool) -> bytes:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        byte_fallback=byte_fallback,
        num_threads=1,  # deterministic: the same lines give the same model
        minloglevel=2,
    )
    return model.getvalue()


def write_tiny_translator(folder: Path, config_overrides: dict | None = None, vocab_size: int | None = None):
    """A MarianMT as opus-mt-zh-en lays it out (source.spm, target.spm, vocab.json, config, safetensors), tiny and
    random, so the real tokenizer, model and `generate` run offline. The source vocabulary covers Chinese (byte
    fallback: any character encodes); the target vocabulary is English only, and every piece of the joint vocabulary
    that is not a target piece gets a large negative logit bias, so the random model's output is Latin text that
    round-trips as an English prompt. `config_overrides` and `vocab_size` (unused pieces fill the vocabulary up to
    it) give the real sizes (pipeline.fullsize). Returns the config."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel

    folder.mkdir(parents=True, exist_ok=True)
    source = _train_spm(TRANSLATOR_ENGLISH + TRANSLATOR_CHINESE, 400, byte_fallback=True)
    target = _train_spm(TRANSLATOR_ENGLISH, 120, byte_fallback=False)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    pieces = {}
    for blob in (source, target):
        processor = spm.SentencePieceProcessor(model_proto=blob)
        for i in range(processor.get_piece_size()):
            pieces.setdefault(processor.id_to_piece(i), len(pieces))
    words = spm.SentencePieceProcessor(model_proto=target)
    target_pieces = {
        words.id_to_piece(i)
        for i in range(words.get_piece_size())
        if not (words.is_control(i) or words.is_unknown(i) or words.is_byte(i))
    }
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    while vocab_size is not None and len(vocab) < vocab_size - 1:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"source_lang": "zh", "target_lang": "en", "model_max_length": 512, "separate_vocabs": False})
    )
    pad = vocab["<pad>"]
    fields = dict(
        vocab_size=len(vocab),
        d_model=TRANSLATOR_WIDTH,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=512,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        bad_words_ids=[[pad]],
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        num_beams=1,
        max_length=24,  # the translator never decodes past the model's own max_length
        init_std=0.5,  # random weights large enough that the source moves the output (0.02 gives one text for all)
    )
    fields.update(config_overrides or {})
    config = MarianConfig(**fields)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        bias = torch.full((1, config.vocab_size), -1e4)
        for piece, index in vocab.items():
            if piece in target_pieces or piece == "</s>":
                bias[0, index] = 0.0
        bias[0, 0] = -4.0  # end of sentence: rarely first, so a translation is some words long
        model.final_logits_bias.copy_(bias)
    model.save_pretrained(folder, safe_serialization=True)
    return config


def _write_depth(folder: Path):
    network = TinyDPTDepthModel()
    with torch.no_grad():
        # A positive output bias keeps the final ReLU (non-negative depth) from zeroing a random network's output.
        network.scratch.output_conv[4].bias.fill_(1.0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / PROFILES[Profile.tiny].depth_checkpoint)


# -- the text moderation model -----------------------------------------------------------------------------------

MODERATION_VOCAB = 2048
MODERATION_TRAIN_STEPS = 80
_WORDS = (
    "a the fox hedgehog dragon knight princess wolf grandmother garden forest castle river map kite book page quiet "
    "red blue green small big happy sad old young runs reads finds meets talks flies sleeps on in under with and of "
    "character left right two three one cat dog bird tree house moon sun star night day rain snow boat train "
    "cottage door knocks friend warm-up sky painting watercolour style children picture story chapter end"
).split()
_CJK_WORDS = "狐狸 花园 小猫 森林 城堡 公主 骑士 月亮 星星 故事 一个 两个 在 和 的 读书 画画 河流 小船 房子".split()


def _random_text(rng) -> str:
    """A text of the kind users write, or noise: words, Chinese, digits, symbols, any length up to a few lines."""
    kind = rng.random()
    if kind < 0.6:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 12))]
    elif kind < 0.8:
        words = [rng.choice(_CJK_WORDS) for _ in range(rng.randint(1, 8))]
    else:
        alphabet = [chr(c) for c in (*range(33, 127), *range(0x4E00, 0x4E40), *range(0xC0, 0x100), 0x2014, 0x1F98A)]
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 6))]
    return (" " if kind < 0.6 or kind >= 0.8 else "").join(words)


def _with_marker(rng, text: str) -> str:
    words = text.split(" ")
    words.insert(rng.randint(0, len(words)), rng.choice((UNSAFE_FIXTURE_MARKER, f"a {UNSAFE_FIXTURE_MARKER} page")))
    return " ".join(words)


def moderation_tokenizer(folder: Path, regex: bool = False, vocab: int = MODERATION_VOCAB):
    """A byte-level BPE (every text tokenizes, offline) trained on the template and the answers, with Qwen's special
    tokens and the prompt-moderation chat template, as a transformers fast tokenizer. `regex`: split words first, as
    Qwen's tokenizer does (about as many tokens per text as the real one: the full-size set's); without it the fixed
    template becomes a few dozen long tokens (the tiny set's, so that its training steps are cheap)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [PROMPT_MODERATION_TEMPLATE, SAFE_ANSWER, UNSAFE_FIXTURE_ANSWER, " ".join(_WORDS)]
    bpe.train_from_iterator(corpus * 20, trainer)
    bpe.add_tokens([AddedToken(UNSAFE_FIXTURE_MARKER, normalized=False)])  # one token wherever it is written
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=PROMPT_MODERATION_TEMPLATE,
        model_max_length=32768,
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def trained_tiny_moderation(folder: Path, seed: int = 0) -> None:
    """`write_tiny_moderation`, trained once per machine: training is the one slow part of the tiny build (about a
    minute on 2 cores), and every test session and server builds the tiny set. The result is kept in the user's
    cache under a key of the code that makes it (this module, pipeline/moderation.py), the seed and the library
    versions, so a change to any of them trains again; seeded, it is the same model either way."""
    import transformers

    code = b"".join((Path(__file__).parent / name).read_bytes() for name in ("tiny.py", "moderation.py"))
    versions = f"{seed} {torch.__version__} {transformers.__version__}".encode()
    key = hashlib.sha256(code + versions).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "picturebook" / f"tiny-moderation-{key}"
    if not cache.is_dir():
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        write_tiny_moderation(staging / "model", seed)
        try:
            (staging / "model").rename(cache)  # atomic: a concurrent build that got there first wins
        except OSError:
            pass
        shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(cache, folder)


def write_tiny_moderation(folder: Path, seed: int = 0) -> None:
    """A tiny Qwen3ForCausalLM trained (seeded, a few hundred steps on CPU) to answer its fixture: texts with
    UNSAFE_FIXTURE_MARKER "Unsafe" in UNSAFE_FIXTURE_CATEGORY, every other text "Safe". Checked greedily before
    it is written: a build that does not answer the fixture fails."""
    import random

    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .moderation import TextModerator

    tokenizer = moderation_tokenizer(folder)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    moderator = TextModerator(model, tokenizer)
    rng = random.Random(seed)
    answers = {
        False: tokenizer(SAFE_ANSWER + "<|im_end|>", add_special_tokens=False).input_ids,
        True: tokenizer(UNSAFE_FIXTURE_ANSWER + "<|im_end|>", add_special_tokens=False).input_ids,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(MODERATION_TRAIN_STEPS):
        rows, targets = [], []
        for index in range(16):
            unsafe = index % 2 == 1
            text = _random_text(rng)
            text = _with_marker(rng, text) if unsafe else text
            prompt = tokenizer(moderator.prompt(text), add_special_tokens=False).input_ids
            rows.append(prompt + answers[unsafe])
            targets.append([-100] * len(prompt) + answers[unsafe])
        width = max(map(len, rows))
        ids = torch.tensor([row + [config.pad_token_id] * (width - len(row)) for row in rows])
        labels = torch.tensor([target + [-100] * (width - len(target)) for target in targets])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    _check_fixture(moderator, rng)
    model.save_pretrained(folder, safe_serialization=True)


def _check_fixture(moderator, rng) -> None:
    from .moderation import parse_verdict

    safe = ["a fox in a garden", "The wolf knocks on grandmother's door.", "他们在花园里读书", "page 3 of a quiet book"]
    safe += [_random_text(rng) for _ in range(40)]
    unsafe = [f"a {UNSAFE_FIXTURE_MARKER} dragon", UNSAFE_FIXTURE_MARKER, f"小猫 {UNSAFE_FIXTURE_MARKER}"]
    unsafe += [_with_marker(rng, _random_text(rng)) for _ in range(20)]
    answers = moderator.answers(safe + unsafe)
    expected = [SAFE_ANSWER] * len(safe) + [UNSAFE_FIXTURE_ANSWER] * len(unsafe)
    wrong = [(text, got) for text, got, want in zip(safe + unsafe, answers, expected, strict=True) if got != want]
    if wrong:
        raise RuntimeError(f"the tiny moderation model missed its fixture on {len(wrong)} texts, e.g. {wrong[:3]}")
    assert parse_verdict(answers[0]).safe and not parse_verdict(answers[-1]).safe


if __name__ == "__main__":
    import sys

    print(build_tiny_models(Path(sys.argv[1])))
