"""Models in and out of linformer-pt: import, export and loading, one module per format.

- export_folder.py: the export folder (model.safetensors, config.json, tokenizer.json) and LinformerForMaskedLM,
  which reads it, a run folder or a checkpoint;
- fine_tuned.py: fine-tuned classifiers in the same layout (linformer-predict, linformer-export);
- transformers_code/: the code an export carries so transformers' Auto classes load it (trust_remote_code);
- to_transformers.py: a standard-attention model as transformers' own RobertaForMaskedLM/BertForMaskedLM folder;
- importing.py with from_transformers.py and from_fairseq.py: linformer-import, from other frameworks' formats,
  reading their tokenizers (tokenizer_files.py) and pickles (safe_pickle.py) without running anything.
"""
