"""transformers classes for a linformer-pt export: a config, a masked LM and a sequence classifier on <s>.

linformer-export writes this file beside the weights; `AutoModelForMaskedLM.from_pretrained(folder,
trust_remote_code=True)` imports it. The export needs no linformer-pt: bundle.py writes the package's model code
with it and rewrites the linformer_pt imports below to relative ones, so the computation is the training code's
own and logits equal linformer-pt's exactly.
"""
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from linformer_pt.models.classifier import ClassificationHead, sentence_features
from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig

ENCODER_PARTS = ("embed_tokens", "embed_positions", "embed_layer_norm", "encoder")
LM_HEAD_PARTS = ("lm_dense", "lm_layer_norm")


class LinformerHFConfig(PretrainedConfig):
    """config.json as linformer-export writes it: `linformer` holds linformer-pt's model config."""

    model_type = "linformer_pt"
    linformer: Optional[dict] = None
    vocab_size: int = 50265
    max_positions: int = 512
    special_ids: Optional[dict] = None
    pad_token_id: Optional[int] = 1
    bos_token_id: Optional[int] = 0
    eos_token_id: Optional[int] = 2
    classifier_dropout: float = 0.1


class LinformerHFPreTrainedModel(PreTrainedModel):
    """Holds LinformerRoberta's parts under their own names, so the export's weight names load unchanged."""

    config_class = LinformerHFConfig
    base_model_prefix = ""
    parts: tuple = ENCODER_PARTS

    def __init__(self, config: LinformerHFConfig) -> None:
        super().__init__(config)
        self.cfg = LinformerRobertaConfig(**config.linformer)
        self.padding_idx = config.pad_token_id
        core = LinformerRoberta(self.cfg, config.vocab_size, config.pad_token_id)
        for name in self.parts:
            self.add_module(name, getattr(core, name))
        if "lm_dense" in self.parts:
            self.lm_bias = core.lm_bias
        self.build_head(config)
        self.post_init()

    def build_head(self, config: LinformerHFConfig) -> None:
        """Task layers beyond linformer-pt's own (none here)."""

    def _init_weights(self, module: nn.Module) -> None:
        """Only weights missing from the export (a new classifier) are initialised: BERT's N(0, 0.02)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        padding_mask = None if attention_mask is None else attention_mask == 0
        return LinformerRoberta.extract_features(self, input_ids, padding_mask)


class LinformerHFModel(LinformerHFPreTrainedModel):
    """The encoder alone: last_hidden_state (B, n, d)."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs: Any
    ) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.features(input_ids, attention_mask))


class LinformerHFForMaskedLM(LinformerHFPreTrainedModel):
    """Logits at every position, with the LM head tied to the token embeddings as in linformer-pt."""

    parts = ENCODER_PARTS + LM_HEAD_PARTS

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        logits = LinformerRoberta.lm_head(self, self.features(input_ids, attention_mask))
        loss = None
        if labels is not None:  # -100 marks positions without a target, as in transformers
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)


class LinformerHFForSequenceClassification(LinformerHFPreTrainedModel):
    """RoBERTa's classification head on the <s> position, linformer-pt's own (models/classifier.py): an export of a
    fine-tuned run loads its trained head and label names; a masked-LM export gets a fresh head of num_labels."""

    def build_head(self, config: LinformerHFConfig) -> None:
        self.classification_head = ClassificationHead(self.cfg.embed_dim, config.num_labels, config.classifier_dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        padding_mask = None if attention_mask is None else attention_mask == 0
        logits = self.classification_head(sentence_features(self, input_ids, padding_mask))
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
