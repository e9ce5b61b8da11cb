"""Building blocks: sequence-axis projections, self-attention (Linformer and standard), encoder layers."""
