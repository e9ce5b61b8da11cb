"""Data pipeline: corpora, tokenizer, token arrays, packing into blocks, MLM masking and batching."""
