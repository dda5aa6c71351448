"""Write a tiny, random-weight Llama checkpoint that a real vLLM can serve.

Everything is built locally with ``numpy``, ``tokenizers`` and ``safetensors``;
nothing is fetched from a model hub.  The output directory is a normal Hugging
Face style checkpoint::

    config.json              LlamaForCausalLM, 2 layers, head_dim 64, float32
    tokenizer.json           byte-level BPE trained on a small built-in English text
    tokenizer_config.json    ChatML ``chat_template``, bos/eos/pad tokens
    special_tokens_map.json
    generation_config.json   token ids only (no sampling defaults)
    model.safetensors        seeded random weights (deterministic for a given seed)

The weights are random, so generations are gibberish, but the text round-trips
through the tokenizer exactly (byte-level BPE), prompts are tokenized like real
English, and greedy decoding (``temperature=0``) is deterministic.

Usage::

    from tests.utils.tiny_llama import write_tiny_llama
    model_dir = write_tiny_llama(tmp_path / "tiny-llama")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = [
    "BOS_TOKEN",
    "CHATML_TEMPLATE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "write_tiny_llama",
]

#: Token that starts every ChatML turn; also used as the BOS token.
BOS_TOKEN = "<|im_start|>"
#: Token that ends every ChatML turn; the model's EOS token.
EOS_TOKEN = "<|im_end|>"
#: Padding token (never produced by the chat template).
PAD_TOKEN = "<|endoftext|>"
#: Special tokens, in id order: they get ids 0, 1, 2.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

#: The usual ChatML template (as used by Qwen2 / OpenHermes style models).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A small English corpus so that common words get their own BPE merges and an
# English prompt of N words is roughly N-1.5N tokens.
_TRAINING_TEXT = """\
Retrieval augmented generation answers a question with the help of documents.
The service splits each document into chunks, embeds every chunk, and stores the
vectors in an index. When a user asks a question, the question is embedded too,
the nearest chunks are retrieved, and the language model writes an answer that
cites the retrieved context. The answer should be short, correct and grounded in
the sources. If the context does not contain the answer, the model should say
that it does not know.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins
with a single step. All that glitters is not gold. Knowledge is power, and time is
money. What is the capital of France? Paris is the capital of France. Who wrote
the report? The team wrote the report in the spring of this year.
You are a helpful assistant. Please answer the question using only the context
below. Context: the system has a health check, a metrics endpoint, a streaming
API, and a queue of requests. Question: how many requests can the server handle
per second? Answer: it depends on the model, the hardware, and the length of the
prompt and of the completion.
Hello, world! This is a test. These are tests of the tokenizer, with numbers like
0 1 2 3 4 5 6 7 8 9 10 42 100 2024 and punctuation: commas, periods. Questions?
Exclamations! Quotes "like this" and 'like that'; colons: and semicolons; dashes -
and (parentheses) [brackets] {braces} <angles> / slashes \\ back-slashes.
User: what did the document say about latency? Assistant: the document says that
latency grows with the number of tokens in the prompt and in the response.
"""


def build_tokenizer(vocab_size: int = 512, text: str | None = None) -> Tokenizer:
    """Train a byte-level BPE tokenizer on a small built-in English text.

    Args:
        vocab_size: Target vocabulary size, special tokens and the 256 byte
            symbols included.  The trainer may stop short of it when the
            corpus has no more pairs to merge.
        text: Training text; defaults to a built-in English paragraph.

    Returns:
        A ``tokenizers.Tokenizer`` with ``<|endoftext|>``, ``<|im_start|>`` and
        ``<|im_end|>`` as special tokens (ids 0, 1, 2).  Any text round-trips
        exactly through ``encode``/``decode``.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = (text if text is not None else _TRAINING_TEXT).splitlines()
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id, (token, tokenizer.token_to_id(token))
    return tokenizer


def _tokenizer_config(max_len: int) -> dict[str, Any]:
    """Return the ``tokenizer_config.json`` content (ChatML template, special tokens)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, tok in enumerate(SPECIAL_TOKENS)
        },
    }


def _random_weights(
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    seed: int,
    init_std: float,
) -> dict[str, np.ndarray]:
    """Return seeded random float32 Llama weights keyed by their HF tensor names."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(init_std)).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones((n,), dtype=np.float32)

    q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab_size, hidden_size)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = normal(q_dim, hidden_size)
        tensors[p + "self_attn.k_proj.weight"] = normal(kv_dim, hidden_size)
        tensors[p + "self_attn.v_proj.weight"] = normal(kv_dim, hidden_size)
        tensors[p + "self_attn.o_proj.weight"] = normal(hidden_size, q_dim)
        tensors[p + "mlp.gate_proj.weight"] = normal(intermediate_size, hidden_size)
        tensors[p + "mlp.up_proj.weight"] = normal(intermediate_size, hidden_size)
        tensors[p + "mlp.down_proj.weight"] = normal(hidden_size, intermediate_size)
        tensors[p + "input_layernorm.weight"] = ones(hidden_size)
        tensors[p + "post_attention_layernorm.weight"] = ones(hidden_size)
    tensors["model.norm.weight"] = ones(hidden_size)
    tensors["lm_head.weight"] = normal(vocab_size, hidden_size)
    return tensors


def write_tiny_llama(
    directory: Path,
    vocab_size: int = 512,
    *,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 64,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    init_std: float = 0.02,
) -> Path:
    """Write a tiny random-weight Llama checkpoint (config, tokenizer, weights).

    Args:
        directory: Where to write the files; created if missing.  Existing
            files of the same names are overwritten.
        vocab_size: Target tokenizer vocabulary size.  The model's
            ``vocab_size`` is set to the tokenizer's actual size so that every
            id the model can sample decodes to text.
        hidden_size: Model width; must equal ``num_heads * head_dim``.
        intermediate_size: MLP width.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        num_kv_heads: Key/value heads (grouped-query attention when smaller).
        head_dim: Per-head size.  vLLM's CPU attention rejects very small
            values such as 16; 64 works.
        max_position_embeddings: Longest context the config allows (the server
            usually caps it lower with ``--max-model-len``).
        seed: Seed of the random weights; the same seed gives identical files.
        init_std: Standard deviation of the normal weight initialisation.

    Returns:
        ``directory`` (as a ``Path``), ready for ``vllm ... --model directory``.
    """
    if hidden_size != num_heads * head_dim:
        raise ValueError(f"hidden_size ({hidden_size}) must equal num_heads*head_dim ({num_heads * head_dim})")
    if num_heads % num_kv_heads:
        raise ValueError("num_heads must be a multiple of num_kv_heads")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    actual_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    pad_id, bos_id, eos_id = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)

    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": actual_vocab,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": init_std,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "float32",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    _write_json(directory / "config.json", config)
    _write_json(directory / "tokenizer_config.json", _tokenizer_config(max_position_embeddings))
    _write_json(
        directory / "special_tokens_map.json",
        {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN},
    )
    _write_json(
        directory / "generation_config.json",
        {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id},
    )

    tensors = _random_weights(
        vocab_size=actual_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        seed=seed,
        init_std=init_std,
    )
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as pretty, key-sorted-free JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
