"""`linformer-export RUN_OR_CKPT OUT/`: a trained model as model.safetensors + config.json + tokenizer.json.

A run folder means its checkpoints/checkpoint_best.pt (--last: checkpoint_last.pt); an export folder can be
exported again (e.g. in another --dtype). Load the result with LinformerForMaskedLM.from_pretrained(OUT); a
fine-tuned (task=sentence_prediction) run exports its classifier and label map, for linformer-predict OUT FILE.
`--format transformers` writes a standard-attention masked LM as transformers' own RobertaForMaskedLM (or
BertForMaskedLM) folder instead, which loads without linformer-pt and without trust_remote_code.
"""
import argparse
import sys
from typing import List, Optional

from linformer_pt.cli.common import one_line_errors
from linformer_pt.errors import UserError

PROG = "linformer-export"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder, a checkpoint .pt file, or an export folder")
    parser.add_argument("out", help="the folder to write (created if missing; its files are replaced)")
    parser.add_argument("--last", action="store_true", help="a run folder's checkpoint_last.pt instead of checkpoint_best.pt")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weights' dtype (default fp32)")
    parser.add_argument("--format", choices=["linformer-pt", "transformers"], default="linformer-pt",
                        help="linformer-pt (default; any model) or transformers (its own RoBERTa/BERT classes; "
                        "standard-attention masked LMs only)")  # fmt: skip
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        from linformer_pt.hub.fine_tuned import FineTuned, load_exportable

        model = load_exportable(args.model, args.last)
        if args.format == "linformer-pt":
            files = model.save_pretrained(args.out, dtype=args.dtype)
        elif isinstance(model, FineTuned):
            raise UserError(f"{args.model} is a fine-tuned classifier; --format transformers writes masked LMs only "
                            "(export it without --format)")  # fmt: skip
        else:
            from linformer_pt.hub.to_transformers import export_native

            files = export_native(model, args.out, dtype=args.dtype)
    for path in files:
        print(path)
    print(f"parameters: {model.num_parameters():,} ({args.dtype})")


if __name__ == "__main__":
    main()
