"""`linformer-import SRC OUT`: a pretrained encoder (transformers RoBERTa / XLM-R / CamemBERT / BERT folder, or a
fairseq RoBERTa / linformer_roberta model.pt) as a linformer-pt export folder, computing what the source computes.

OUT is what linformer-export writes: linformer-fill-mask, linformer-eval, checkpoint.init_from,
checkpoint.finetune_from and transformers (trust_remote_code) read it. Bad input is one line and nothing is written.
"""
import argparse
import sys
from typing import List, Optional

from linformer_pt.cli.common import one_line_errors
from linformer_pt.errors import UserError

PROG = "linformer-import"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("src", help="a transformers model folder, or a fairseq model.pt (or the folder holding it)")
    parser.add_argument("out", help="the export folder to write")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weights in OUT (default fp32)")
    fairseq = parser.add_argument_group("fairseq checkpoints (files default to those beside model.pt)")
    fairseq.add_argument("--dict", dest="dict_txt", help="fairseq's dict.txt")
    fairseq.add_argument("--encoder-json", help="GPT-2's BPE vocabulary, encoder.json")
    fairseq.add_argument("--vocab-bpe", help="GPT-2's BPE merges, vocab.bpe")
    fairseq.add_argument("--heads", type=int, help="attention heads, when the checkpoint's hyperparameters lack them")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        from pathlib import Path

        from linformer_pt.hub.importing import import_model

        if args.heads is not None and args.heads < 1:
            raise UserError(f"--heads {args.heads} must be >= 1")
        options = {"dtype": args.dtype}
        if Path(args.src).expanduser().is_file() or (Path(args.src).expanduser() / "model.pt").is_file():
            options.update(heads=args.heads, dict_txt=args.dict_txt, encoder_json=args.encoder_json,
                           vocab_bpe=args.vocab_bpe)  # fmt: skip
        paths = import_model(Path(args.src), Path(args.out), **options)
        print(f"imported {args.src} into {args.out}: " + ", ".join(p.name for p in paths[:3]) + " + transformers code")


if __name__ == "__main__":
    main()
