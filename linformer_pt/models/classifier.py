"""A LinformerRoberta encoder with RoBERTa's sentence head on <s> instead of the masked-LM head (fine-tuning).

Pretrained weights come from a pretraining checkpoint or an export: the encoder is loaded bit for bit (resized
when max_positions differs), the LM head is dropped, and the sentence head starts from RoBERTa's initialisation.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from linformer_pt.errors import UserError
from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig, _init_bert_params, forward_flops
from linformer_pt.models.resize import resize_for
from linformer_pt.modules.masked_grid import MaskedGrid

LM_HEAD = ("lm_dense.", "lm_layer_norm.", "lm_bias")
HEAD = "classification_head."


class ClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj on the features of the first token (<s>), as in RoBERTa."""

    def __init__(self, embed_dim: int, num_outputs: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(embed_dim, num_outputs)

    def forward(self, features: Tensor) -> Tensor:
        x = self.dropout(features[:, 0])
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


def sentence_features(model: LinformerRoberta, tokens: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """The encoder's output at <s>, (B, 1, d): the last layer computes that row only (modules/masked_grid.py), since
    the sentence head reads no other. A plain function, so the transformers export runs the very same code."""
    grid = MaskedGrid.first_positions(tokens.shape[0], tokens.shape[1], tokens.device)
    return LinformerRoberta.extract_features(model, tokens, padding_mask, grid).unsqueeze(1)


class LinformerRobertaClassifier(LinformerRoberta):
    """Sentence classification (num_outputs classes) or regression (num_outputs = 1) on the encoder's <s>."""

    def __init__(
        self, cfg: LinformerRobertaConfig, vocab_size: int, padding_idx: int, num_outputs: int, pooler_dropout: float
    ) -> None:
        super().__init__(cfg, vocab_size, padding_idx)
        del self.lm_dense, self.lm_layer_norm, self.lm_bias  # unused here: DDP would wait for their gradients
        self.num_outputs = num_outputs
        self.classification_head = ClassificationHead(cfg.embed_dim, num_outputs, pooler_dropout)
        self.classification_head.apply(_init_bert_params)

    def forward(self, tokens: Tensor, padding_mask: Tensor = None) -> Tensor:  # type: ignore[override]
        """Logits (B, num_outputs) for token ids (B, n); padding_mask is True at padded positions."""
        return self.classification_head(sentence_features(self, tokens, padding_mask))

    def forward_flops(self, n: int, masked: float = 0.0) -> float:
        """Encoder FLOPs over n tokens (the last layer at <s> only) plus the head on one position (no LM head:
        `masked` is ignored)."""
        d = self.cfg.embed_dim
        encoder = forward_flops(self.cfg, self.embed_tokens.num_embeddings, n, 0.0, last_layer_rows=1.0)
        return encoder + 2.0 * (d * d + d * self.num_outputs)

    def load_encoder(self, state: Dict[str, Tensor], projection: str) -> List[str]:
        """Load a pretrained LinformerRoberta's weights into the encoder (resized to max_positions), dropping its LM
        head; returns the names dropped. The sentence head keeps its fresh initialisation."""
        dropped = [name for name in state if name.startswith(LM_HEAD)]
        encoder = {name: value for name, value in state.items() if not name.startswith(LM_HEAD)}
        encoder = resize_for(encoder, self.state_dict(), projection)
        try:
            missing, unexpected = self.load_state_dict(encoder, strict=False)
        except RuntimeError as err:
            details = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())
            raise UserError(f"the pretrained weights do not fit the model: {details}") from None
        missing = [name for name in missing if not name.startswith(HEAD)]
        if missing or unexpected:
            raise UserError(
                f"the pretrained weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return dropped
