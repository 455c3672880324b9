"""Writes a small random-weight llama GGUF for benches/llama.sh.

The tokenizer (vocabulary, scores, token types, special ids) is copied from a vocabulary-only
GGUF shipped in llama.cpp's source; the weights are seeded random numbers. The model
generates nonsense, but its prompt processing costs what a real model of this shape costs,
and llama-server's prefix cache works on it exactly as on a real one.

Usage: python llama_model.py VOCAB.gguf OUT.gguf   (shape from env LAYERS EMBD HEADS FF CTX)
"""
import os
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def main(vocab_path: str, out_path: str) -> None:
    layers = int(os.environ.get("LAYERS", 8))
    embd = int(os.environ.get("EMBD", 512))
    heads = int(os.environ.get("HEADS", 8))
    ff = int(os.environ.get("FF", 1408))
    ctx = int(os.environ.get("CTX", 8192))
    rng = np.random.default_rng(7)

    reader = GGUFReader(vocab_path)
    writer = GGUFWriter(out_path, "llama")
    n_vocab = 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "tokenizer.ggml.tokens":
            n_vocab = len(value)
        writer.add_key_value(field.name, value, vtype, sub)

    writer.add_name("random-llama")
    writer.add_context_length(ctx)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embd // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1)  # mostly f16

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", w(n_vocab, embd))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", w(n_vocab, embd))
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(p + name + ".weight", w(embd, embd))
        writer.add_tensor(p + "ffn_norm.weight", ones)
        writer.add_tensor(p + "ffn_gate.weight", w(ff, embd))
        writer.add_tensor(p + "ffn_up.weight", w(ff, embd))
        writer.add_tensor(p + "ffn_down.weight", w(embd, ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
