"""`linformer-fill-mask OUT "The <mask> sat on the mat."`: the top-k tokens for each <mask>, with probabilities.

Several texts, several masks per text, or --file with one text per line; OUT is an export folder, a run folder
or a checkpoint. In the texts "<mask>" is the mask token and, as in RoBERTa, takes the space before it.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from linformer_pt.cli.common import one_line_errors
from linformer_pt.data.tokenizer import MASK
from linformer_pt.errors import UserError

PROG = "linformer-fill-mask"


def read_texts(texts: List[str], file: Optional[str], mask: str = MASK) -> List[Tuple[str, Optional[int]]]:
    """(text, line number in --file or None) for the texts given, then the non-blank lines of --file.

    A --file line without <mask> is skipped with a warning naming its line, so one bad line does not cost the others;
    a text given on the command line must have one (the model raises the usual one-line error otherwise). `mask` is
    the model's mask token: "<mask>", or "[MASK]" for a model imported from BERT.
    """
    out: List[Tuple[str, Optional[int]]] = [(text, None) for text in texts]
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise UserError(f"--file {file}: no such file")
        skipped = 0
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if mask not in line:
                print(f"{PROG}: warning: --file {file} line {number} has no {mask}; skipped", file=sys.stderr)
                skipped += 1
                continue
            out.append((line.strip(), number))
        if skipped and not out:
            raise UserError(f"--file {file}: none of its {skipped} non-blank line(s) has a {mask}; nothing to fill")
    if not out:
        raise UserError(f"no text given; pass texts with {mask} or --file with one text per line")
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an export folder, a run folder or a checkpoint .pt file")
    parser.add_argument("texts", nargs="*", help='texts with one or more <mask>, e.g. "The <mask> sat on the mat."')
    parser.add_argument("--file", help="a text file with one text per line")
    parser.add_argument("--top-k", type=int, default=5, help="predictions per mask (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--json", action="store_true", help="one JSON line per text instead of a table")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with one_line_errors(PROG):
        if args.top_k < 1 or args.batch_size < 1:
            raise UserError("--top-k and --batch-size must be >= 1")
        if args.file and not Path(args.file).expanduser().is_file():  # refused before the model is loaded
            raise UserError(f"--file {args.file}: no such file")
        if not args.texts and not args.file:
            raise UserError("no text given; pass texts with <mask> or --file with one text per line")
        from linformer_pt.hub.export_folder import load_any

        model = load_any(args.model, last=False)
        texts = read_texts(args.texts, args.file, model.mask_token)  # "[MASK]" for a model imported from BERT
        for start in range(0, len(texts), args.batch_size):
            batch = texts[start : start + args.batch_size]
            for (text, line), masks in zip(batch, model.fill_mask([text for text, _ in batch], args.top_k)):
                if args.json:
                    # "line" ties an output to its --file line, since lines without <mask> are skipped.
                    record = {"text": text, "masks": masks} if line is None else {"text": text, "line": line, "masks": masks}
                    print(json.dumps(record), flush=True)
                    continue
                print(text)
                for number, predictions in enumerate(masks, 1):
                    shown = "  ".join(f"{p['token_str'].strip() or repr(p['token_str'])} {p['score']:.3f}" for p in predictions)
                    print(f"  <mask> {number}: {shown}", flush=True)


if __name__ == "__main__":
    main()
