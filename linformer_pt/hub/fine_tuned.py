"""Fine-tuned sentence_prediction models from a run folder, a checkpoint or an export, and their export.

An export of a fine-tuned run has the masked-LM export's layout (export_folder.py: model.safetensors, config.json,
tokenizer.json and the code transformers imports) plus the task: its settings (columns, truncation,
tokens_per_sample) and its label map. So linformer-predict reads a new file exactly as the run read its validation
file, wherever the export is copied, and AutoModelForSequenceClassification loads the trained head with the label
names (linformer_pt/hub/transformers_code/).
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from linformer_pt.errors import UserError
from linformer_pt.hub.export_folder import (
    CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, LinformerForMaskedLM, check_format, find_tokenizer, read_weights,
    resolve_checkpoint, write_export,
)  # fmt: skip
from linformer_pt.models.classifier import LinformerRobertaClassifier
from linformer_pt.models.linformer_roberta import LinformerRobertaConfig
from linformer_pt.registry import MODELS, TASKS
from linformer_pt.training.checkpoint import load_checkpoint

TASK = "sentence_prediction"
HF_ARCHITECTURE = "LinformerHFForSequenceClassification"
PathLike = Union[str, Path]


@dataclass
class FineTuned:
    """A fine-tuned classifier (or regressor) with what reading its inputs and outputs needs."""

    model: LinformerRobertaClassifier  # in eval mode, fp32
    task_cfg: Any  # the run's SentencePredictionConfig: columns, truncation, tokens_per_sample
    state: Dict[str, Any]  # the task's saved state: labels, regression, num_outputs
    tokenizer_path: Path

    def save_pretrained(self, folder: PathLike, dtype: Optional[Union[str, torch.dtype]] = None) -> List[Path]:
        """Write the export (weights in `dtype`, default fp32); returns the paths written."""
        from linformer_pt.data.tokenizer import load_tokenizer, special_ids

        config = {
            "special_ids": special_ids(load_tokenizer(self.tokenizer_path)),
            "parameters": self.num_parameters(),
            "task": dataclasses.asdict(self.task_cfg),
            "task_state": self.state,
            **transformers_labels(self.state, self.task_cfg.pooler_dropout),
        }
        return write_export(folder, self.model, self.tokenizer_path, config, dtype, HF_ARCHITECTURE)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def transformers_labels(state: Dict[str, Any], dropout: float) -> Dict[str, Any]:
    """config.json keys that make AutoModelForSequenceClassification build this head and name its outputs."""
    if state["regression"]:
        return {"num_labels": 1, "problem_type": "regression", "classifier_dropout": dropout}
    names = state["labels"]
    return {"id2label": {str(i): name for i, name in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
            "problem_type": "single_label_classification", "classifier_dropout": dropout}  # fmt: skip


def build(model_cfg: LinformerRobertaConfig, vocab_size: int, pad_id: int, task_cfg: Any, state: Dict[str, Any],
          weights: Dict[str, torch.Tensor], source: Path) -> LinformerRobertaClassifier:  # fmt: skip
    """The classifier with `weights` loaded exactly (fp32 parameters), in eval mode."""
    model = LinformerRobertaClassifier(model_cfg, vocab_size, pad_id, state["num_outputs"], task_cfg.pooler_dropout)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
        raise UserError(f"{source}: the weights do not fit the model config: {details}") from None
    return model.eval()


def from_checkpoint(source: PathLike, last: bool = False, loaded: Optional[Dict[str, Any]] = None) -> FineTuned:
    """A fine-tuning run folder (its checkpoint_best.pt, or checkpoint_last.pt with last=True) or checkpoint file;
    `loaded` is that checkpoint when the caller has read it already (a large one is read once)."""
    path = resolve_checkpoint(source, last)
    checkpoint = load_checkpoint(path) if loaded is None else loaded
    task = checkpoint["cfg"].get("task", {})
    if task.get("name") != TASK:
        raise UserError(f"{path} is a task={task.get('name', 'unknown')} run, not a fine-tuned task={TASK} one")
    task_cfg, state, args = TASKS.config(task), checkpoint["task_state"], checkpoint["model_args"]
    model = build(MODELS.config(checkpoint["cfg"]["model"]), args["vocab_size"], args["pad_id"], task_cfg, state,
                  checkpoint["model"], path)  # fmt: skip
    return FineTuned(model, task_cfg, state, find_tokenizer(path, checkpoint))


def from_pretrained(folder: PathLike) -> FineTuned:
    """An export written by FineTuned.save_pretrained (linformer-export of a fine-tuning run)."""
    folder = Path(folder).expanduser()
    config = check_format(folder)
    if config.get("task", {}).get("name") != TASK:
        raise UserError(f"{folder} is a masked-LM export, not a fine-tuned task={TASK} one; fine-tune it with "
                        f"checkpoint.finetune_from={folder}")  # fmt: skip
    tokenizer_path = folder / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise UserError(f"{folder} has no {TOKENIZER_FILE}; an export needs the tokenizer its ids come from")
    try:
        model_cfg = LinformerRobertaConfig(**config["linformer"])
        task_cfg, state = TASKS.config(config["task"]), dict(config["task_state"])
        vocab_size, pad_id = int(config["vocab_size"]), int(config["special_ids"]["pad"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{folder / CONFIG_FILE} is incomplete or malformed ({err})") from None
    weights = read_weights(folder / WEIGHTS_FILE, config.get("tied", {}))
    model = build(model_cfg, vocab_size, pad_id, task_cfg, state, weights, folder)
    return FineTuned(model, task_cfg, state, tokenizer_path)


def load_classifier(source: PathLike, last: bool = False) -> FineTuned:
    """An export folder (config.json) or a fine-tuning run folder or checkpoint."""
    path = Path(source).expanduser()
    return from_pretrained(path) if (path / CONFIG_FILE).is_file() else from_checkpoint(path, last)


def load_exportable(source: PathLike, last: bool = False) -> Union[FineTuned, LinformerForMaskedLM]:
    """What linformer-export writes: a fine-tuned classifier or a masked LM, whichever `source` holds."""
    path = Path(source).expanduser()
    if (path / CONFIG_FILE).is_file():
        task = check_format(path).get("task", {}).get("name")
        return from_pretrained(path) if task == TASK else LinformerForMaskedLM.from_pretrained(path)
    checkpoint_path = resolve_checkpoint(path, last)
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint["cfg"].get("task", {}).get("name") == TASK:
        return from_checkpoint(checkpoint_path, loaded=checkpoint)
    return LinformerForMaskedLM.from_checkpoint(checkpoint_path, loaded=checkpoint)
