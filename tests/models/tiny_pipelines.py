"""Tiny random diffusers pipelines (SD3, FLUX, Qwen-Image, FLUX.2-klein, Wan), built offline.

Every component comes from a small config (no hub access); the tokenizers are written as files
(a byte-level CLIP ``vocab.json`` + ``merges.txt``; a T5 ``tokenizer.json`` built with the
``tokenizers`` library; a byte-level BPE Qwen tokenizer) and loaded back with ``from_pretrained``.
``build_tiny_*`` return the folder written by ``pipeline.save_pretrained``; ``make_tiny_*`` return
the in-memory pipeline.

Dimensions that must agree (the pipelines do not check them):
- T5 ``d_model`` = transformer ``joint_attention_dim`` ≥ the two CLIP hidden sizes added (SD3
  pads the concatenated CLIP token embeddings to the T5 width);
- SD3 ``pooled_projection_dim`` = sum of the CLIP projection dims; FLUX's = the CLIP hidden size
  (it uses the pooled output of a ``CLIPTextModel``, not a projection);
- CLIP ``eos_token_id`` = the tokenizer's end id (the pooled token is found by that id);
- FLUX ``in_channels`` = 4 × VAE latent channels (2×2 packing) and ``sum(axes_dims_rope)`` =
  ``attention_head_dim``; SD3 ``caption_projection_dim`` = heads × head dim.

Usage: ``path = build_tiny_sd3(tmp_path)``; images are ``RESOLUTION`` pixels square, latents
``RESOLUTION // 2`` (two VAE blocks), prompts at most ``MAX_SEQUENCE_LENGTH`` T5 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

RESOLUTION = 16
MAX_SEQUENCE_LENGTH = 8
CLIP_MAX_LENGTH = 12
_T5_WIDTH = 32
_WORDS = [
    "a",
    "an",
    "the",
    "red",
    "green",
    "blue",
    "small",
    "big",
    "circle",
    "square",
    "triangle",
    "cat",
    "dog",
    "on",
    "of",
    "and",
]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2/CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _write_clip_tokenizer(folder: Path) -> int:
    """A byte-level CLIP BPE: every byte (plain and word-final), a few merges. Returns vocab size."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    merges = ["r e</w>", "c a", "ca t</w>"]
    tokens += ["re</w>", "ca", "cat</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH)
    tok.save_pretrained(folder)
    return len(tokens)


def _write_t5_tokenizer(folder: Path) -> int:
    """A Unigram T5 tokenizer.json (pad 0, eos 1, unk 2) over a small word list."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(chr(c), -5.0) for c in range(ord("a"), ord("z") + 1)]
    vocab += [("▁" + w, -1.0) for w in _WORDS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 0}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = T5TokenizerFast.from_pretrained(folder, extra_ids=0)
    loaded.save_pretrained(folder)
    return len(vocab)


def _clip_encoder(folder: Path, hidden: int, projection: bool, seed: int):
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocab_size = _write_clip_tokenizer(folder)
    tok = CLIPTokenizer.from_pretrained(folder)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return tok, model.eval()


def _t5_encoder(folder: Path, seed: int):
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    vocab_size = _write_t5_tokenizer(folder)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=_T5_WIDTH,
        d_kv=8,
        d_ff=48,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5TokenizerFast.from_pretrained(folder), T5EncoderModel(config).eval()


def _vae(latent_channels: int, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=RESOLUTION,
        scaling_factor=1.5,
        shift_factor=0.06,
    ).eval()


def build_tiny_sd3(tmp_path: Path, seed: int = 0) -> Path:
    """Build and save a tiny random ``StableDiffusion3Pipeline``; returns its folder."""
    out = Path(tmp_path) / "tiny_sd3"
    make_tiny_sd3(tmp_path, seed).save_pretrained(out)
    return out


def build_tiny_flux(tmp_path: Path, seed: int = 0) -> Path:
    """Build and save a tiny random ``FluxPipeline`` (guidance-distilled, like FLUX.1-dev)."""
    out = Path(tmp_path) / "tiny_flux"
    make_tiny_flux(tmp_path, seed).save_pretrained(out)
    return out


def make_tiny_sd3(tmp_path: Path, seed: int = 0):
    """A tiny random in-memory ``StableDiffusion3Pipeline`` (tokenizer files under tmp_path)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    work = Path(tmp_path) / "sd3_parts"
    tok1, enc1 = _clip_encoder(work / "tok1", hidden=8, projection=True, seed=seed + 1)
    tok2, enc2 = _clip_encoder(work / "tok2", hidden=12, projection=True, seed=seed + 2)
    tok3, enc3 = _t5_encoder(work / "tok3", seed=seed + 3)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=_T5_WIDTH,
        caption_projection_dim=16,
        pooled_projection_dim=8 + 12,
        out_channels=4,
        pos_embed_max_size=RESOLUTION // 2,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(latent_channels=4, seed=seed + 4),
        text_encoder=enc1,
        tokenizer=tok1,
        text_encoder_2=enc2,
        tokenizer_2=tok2,
        text_encoder_3=enc3,
        tokenizer_3=tok3,
    )


def make_tiny_flux(tmp_path: Path, seed: int = 0):
    """A tiny random in-memory ``FluxPipeline`` (tokenizer files under tmp_path)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    work = Path(tmp_path) / "flux_parts"
    tok1, enc1 = _clip_encoder(work / "tok1", hidden=16, projection=False, seed=seed + 1)
    tok2, enc2 = _t5_encoder(work / "tok2", seed=seed + 2)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=_T5_WIDTH,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=4,
        max_image_seq_len=64,
    )
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(latent_channels=4, seed=seed + 4),
        text_encoder=enc1,
        tokenizer=tok1,
        text_encoder_2=enc2,
        tokenizer_2=tok2,
    )


# --- Qwen-Image and FLUX.2-klein: Qwen text encoders and their byte-level BPE tokenizer -------

# Qwen-Image drops the first 34 tokens of its templated prompt (the system prefix, as the real
# tokenizer splits it): the tiny tokenizer merges every word of that prefix into one token, so
# the same 34 tokens go and the embeddings start at the user's prompt, as with the real model.
_QWEN_TEMPLATE_WORDS = [
    "the", "image", "by", "detailing", "color", "shape", "size", "texture", "quantity", "text",
    "spatial", "relationships", "of", "objects", "and", "background",
]  # fmt: skip
_QWEN_LINE_STARTS = ["system", "user", "assistant", "Describe"]  # words after a newline
_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]
# Qwen3's chat format for one user turn, with the empty thinking block that
# ``enable_thinking=False`` asks for (what FLUX.2-klein encodes its prompts with).
_QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def _word_merges(words: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Byte-level BPE merges that build each word left to right: ``(merges, new tokens)``.

    Words with a leading space (``Ġword``) come first, so their chains (which all start with
    ``Ġ``) outrank any merge of a bare word and always complete; the few bare words (line
    starts of the chat template) share no merge with each other's middles."""
    merges: list[tuple[str, str]] = []
    tokens: list[str] = []
    for word in [*("Ġ" + w for w in words), *_QWEN_LINE_STARTS]:
        left = word[0]
        for char in word[1:]:
            pair = (left, char)
            left += char
            if pair not in merges:
                merges.append(pair)
                tokens.append(left)
    return merges, tokens


def _write_qwen_tokenizer(folder: Path, chat_template: str | None = None) -> int:
    """A Qwen2 byte-level BPE tokenizer (every byte, whole-word merges, Qwen's special tokens),
    saved with ``save_pretrained``. Returns the vocabulary size (special tokens included)."""
    from transformers import Qwen2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted(set(_QWEN_TEMPLATE_WORDS) | set(_WORDS))
    merges, merged = _word_merges(words)
    tokens = list(dict.fromkeys([*_byte_symbols(), *merged]))
    vocab = {t: i for i, t in enumerate(tokens)}
    specials = {t: len(vocab) + i for i, t in enumerate(_QWEN_SPECIALS)}
    tok = Qwen2Tokenizer(vocab={**vocab, **specials}, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": _QWEN_SPECIALS[1:]})
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(folder)
    return len(vocab) + len(specials)


def _qwen25_vl_encoder(folder: Path, hidden: int, seed: int):
    """Qwen-Image's text encoder in miniature: a ``Qwen2_5_VLForConditionalGeneration`` with a
    2-layer text model and a 1-block vision tower (unused by text-to-image, but part of it)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
    )

    vocab_size = _write_qwen_tokenizer(folder)
    tok = Qwen2Tokenizer.from_pretrained(folder)
    ids = tok.convert_tokens_to_ids(_QWEN_SPECIALS[:7])
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "bos_token_id": ids[0],
            "eos_token_id": ids[2],
            "pad_token_id": ids[0],
            # multimodal RoPE: the sections (time, rows, cols) add up to head_dim / 2
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1]},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 2,
            "spatial_merge_size": 1,
            "temporal_patch_size": 1,
            "window_size": 4,
            "fullatt_block_indexes": [0],
        },
        vision_start_token_id=ids[3],
        vision_end_token_id=ids[4],
        image_token_id=ids[5],
        video_token_id=ids[6],
    )
    torch.manual_seed(seed)
    return tok, Qwen2_5_VLForConditionalGeneration(config).eval()


def _qwen3_encoder(folder: Path, hidden: int, layers: int, seed: int):
    """FLUX.2-klein's text encoder in miniature: a ``Qwen3ForCausalLM`` (its hidden states of
    layers 9, 18 and 27 are the prompt embedding, so it needs at least 27 layers)."""
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    vocab_size = _write_qwen_tokenizer(folder, chat_template=_QWEN3_CHAT_TEMPLATE)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    return Qwen2Tokenizer.from_pretrained(folder), Qwen3ForCausalLM(config).eval()


QWEN_TEXT_WIDTH = 16
KLEIN_TEXT_WIDTH = 8


def make_tiny_qwen_image(tmp_path: Path, seed: int = 0):
    """A tiny random in-memory ``QwenImagePipeline`` (tokenizer files under tmp_path).

    Its VAE (``AutoencoderKLQwenImage``, one temporal-downsample entry) scales by 2, latents have
    4 channels, packed 2×2 into 16-channel tokens; the transformer's ``joint_attention_dim`` is the
    text model's hidden size and ``sum(axes_dims_rope)`` its head dim."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    tok, encoder = _qwen25_vl_encoder(
        Path(tmp_path) / "qwen_image_parts" / "tok", QWEN_TEXT_WIDTH, seed + 1
    )
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * 4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=QWEN_TEXT_WIDTH,
        axes_dims_rope=(2, 2, 4),
    )
    torch.manual_seed(seed + 4)
    vae = AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.05, 0.3],
        latents_std=[1.5, 0.8, 1.2, 2.0],
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=4,
        max_image_seq_len=64,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    return QwenImagePipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tok
    )


def make_tiny_flux2_klein(tmp_path: Path, seed: int = 0, is_distilled: bool = False):
    """A tiny random in-memory ``Flux2KleinPipeline`` (the undistilled base: real CFG).

    The VAE (``AutoencoderKLFlux2``, two blocks) scales by 2 and has 4 latent channels, which the
    pipeline patchifies 2×2 into 16 and normalizes with the VAE's batch-norm statistics (set to
    non-trivial values here); the transformer's ``joint_attention_dim`` is 3 × the text width
    (hidden states of three layers side by side) and ``sum(axes_dims_rope)`` its head dim."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )

    tok, encoder = _qwen3_encoder(
        Path(tmp_path) / "flux2_klein_parts" / "tok", KLEIN_TEXT_WIDTH, 28, seed + 1
    )
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=3 * KLEIN_TEXT_WIDTH,
        timestep_guidance_channels=16,
        axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=False,
    )
    torch.manual_seed(seed + 4)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=RESOLUTION,
    ).eval()
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn(16))
        vae.bn.running_var.copy_(0.5 + torch.rand(16))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"
    )
    return Flux2KleinPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=encoder,
        tokenizer=tok,
        is_distilled=is_distilled,
    )


def build_tiny_qwen_image(tmp_path: Path, seed: int = 0) -> Path:
    """Build and save a tiny random ``QwenImagePipeline``; returns its folder."""
    out = Path(tmp_path) / "tiny_qwen_image"
    make_tiny_qwen_image(tmp_path, seed).save_pretrained(out)
    return out


def build_tiny_flux2_klein(tmp_path: Path, seed: int = 0) -> Path:
    """Build and save a tiny random ``Flux2KleinPipeline`` (undistilled: CFG); returns its folder."""
    out = Path(tmp_path) / "tiny_flux2_klein"
    make_tiny_flux2_klein(tmp_path, seed).save_pretrained(out)
    return out


# Wan: frames must be 4k + 1 (temporal VAE factor 4), height and width multiples of 16 (spatial
# VAE factor 8 × patch 2); the tiny video is WAN_NUM_FRAMES × WAN_HEIGHT × WAN_WIDTH.
WAN_NUM_FRAMES = 5
WAN_HEIGHT = 16
WAN_WIDTH = 32


def _umt5_encoder(folder: Path, seed: int):
    """A tiny UMT5 encoder (Wan's text encoder) with the T5 tokenizer's files."""
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    vocab_size = _write_t5_tokenizer(folder)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=_T5_WIDTH,
        d_kv=8,
        d_ff=48,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5TokenizerFast.from_pretrained(folder), UMT5EncoderModel(config).eval()


def make_tiny_wan(
    tmp_path: Path,
    seed: int = 0,
    *,
    expand_timesteps: bool = False,
    boundary_ratio: float | None = None,
):
    """A tiny random in-memory ``WanPipeline`` (Wan2.1 layout; ``expand_timesteps`` as Wan2.2
    TI2V: one timestep per latent token; ``boundary_ratio`` as Wan2.2 T2V-A14B: a second random
    transformer, ``transformer_2``, for timesteps below ``boundary_ratio · 1000``). VAE factors
    4 (time) × 8 (space), as Wan's."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    tok, enc = _umt5_encoder(Path(tmp_path) / "wan_parts" / "tok", seed=seed + 1)

    def wan_transformer(torch_seed: int) -> WanTransformer3DModel:
        torch.manual_seed(torch_seed)
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=_T5_WIDTH,
            freq_dim=16,
            ffn_dim=32,
            num_layers=2,
            rope_max_seq_len=32,
        )

    transformer = wan_transformer(seed)
    transformer_2 = None if boundary_ratio is None else wan_transformer(seed + 7)
    torch.manual_seed(seed + 4)
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.05, 0.3],
        latents_std=[1.5, 0.8, 1.2, 2.0],
    ).eval()
    return WanPipeline(
        tokenizer=tok,
        text_encoder=enc,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
        expand_timesteps=expand_timesteps,
    )


def build_tiny_wan(tmp_path: Path, seed: int = 0, *, boundary_ratio: float | None = None) -> Path:
    """Build and save a tiny random ``WanPipeline`` (``boundary_ratio``: with ``transformer_2``,
    Wan2.2 A14B's layout); returns its folder."""
    out = Path(tmp_path) / "tiny_wan"
    make_tiny_wan(tmp_path, seed, boundary_ratio=boundary_ratio).save_pretrained(out)
    return out
