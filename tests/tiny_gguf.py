"""Build a tiny llama-architecture GGUF model that llama.cpp loads and generates from.

No model can be downloaded here, so tests make their own: random weights, two
layers, 64-wide, and a SentencePiece-style ("llama") vocabulary of the three
special tokens plus the 256 byte-fallback tokens ``<0x00>``..``<0xFF>``, so any
text tokenizes (as bytes) and any output detokenizes. The output projection
is zero for every token but printable ASCII, and large for those: the model
then emits printable gibberish and practically never EOS, so a generation runs
to ``max_tokens`` — which is what a streaming test needs to measure.

Usage: ``write_tiny_llama(path)``; or ``python tests/tiny_gguf.py OUT.gguf``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

UNK, BOS, EOS = 0, 1, 2
FIRST_BYTE = 3
PRINTABLE = range(0x20, 0x7F)

# gguf's TokenType values (gguf.TokenType), spelled out to keep the layout visible.
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: <unk>, <s>, </s>, then one token per byte."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    return tokens, scores, types


def write_tiny_llama(
    path: str | Path,
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    context_length: int = 2048,
    name: str = "tiny-llama",
) -> Path:
    """Write the model to ``path`` and return it. Same arguments, same bytes."""
    import gguf  # the `test` extra; imported here so `python -m pytest --collect-only` works without it

    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head

    def weight(rows: int, cols: int, scale: float = 0.1) -> np.ndarray:
        # numpy (rows, cols) is ggml's ne = (cols, rows): a (out, in) matrix, as llama.cpp expects.
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_unk_token_id(UNK)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd, 1.0))
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    # Logit 0 for specials and non-printable bytes, ~N(0, 10) for printable ones: the
    # softmax mass sits on printable ASCII, EOS included in the "never" side.
    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    for byte in PRINTABLE:
        output[FIRST_BYTE + byte] = rng.standard_normal(n_embd) * (10.0 / np.sqrt(n_embd))
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_gguf.py OUT.gguf")
    print(write_tiny_llama(sys.argv[1]))
