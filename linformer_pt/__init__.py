"""linformer-pt: masked-LM pretraining of Linformer encoders.

Subpackages: modules (attention), models, tasks, data, training, cli.
"""
__version__ = "0.1.0"
