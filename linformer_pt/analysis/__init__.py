"""Analysis of trained models: attention spectra (is P low rank?) and learned Linformer projections."""
