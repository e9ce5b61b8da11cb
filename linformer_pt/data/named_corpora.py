"""Named corpora (dataset.sources, dataset.valid_sets) tokenized into cached shards with one shared tokenizer.

Each name resolves to a corpus.Source (files, folders, globs or a `datasets` folder) tokenized and cached like a
single run's, or to a split of a linformer-preprocess folder. The tokenizer is tokenizer.path, else the
preprocessed folders' own (they must all share it), else one trained on all the training sources' text.
Without named validation sets or dataset.valid_files, each source holds out dataset.valid_fraction of its
documents, and that held-out part is a validation set named after it.
"""
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from linformer_pt.data.binarize import TokenizedCorpus
from linformer_pt.data.corpus import Source, cached_corpus, file_source, held_out, hub_source, preprocessed_corpora
from linformer_pt.data.mixture_spec import SOURCE_KEYS, VALID_KEYS, CorpusSpec, parse_specs
from linformer_pt.data.sources import check_sources, expand_paths
from linformer_pt.data.tokenizer import cached_tokenizer, load_tokenizer, special_ids
from linformer_pt.errors import UserError


@dataclass
class NamedCorpora:
    tokenizer_path: Path
    train: Dict[str, TokenizedCorpus]  # empty when the training data is not a mixture
    valid: Dict[str, TokenizedCorpus]
    provenance: Dict[str, Any]


def spec_source(spec: CorpusSpec, data: Any, key: str, default_split: str) -> Source:
    """The documents of a files or hub spec."""
    if spec.files:
        paths = expand_paths(spec.files, key, data.file_glob, announce=True)
        check_sources(paths, key, data.text_field, data.encoding_errors)
        return file_source(paths, data.text_field, data.encoding_errors)
    return hub_source(spec.hf_name, spec.hf_config, spec.hf_split or default_split, data.text_field)


def chained(sources: List[Source]) -> Source:
    """All sources' documents one after another (what a shared tokenizer is trained on)."""
    sizes = [s.num_bytes for s in sources]
    total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
    return Source({"chain": [s.spec for s in sources]},
                  lambda: itertools.chain.from_iterable(s.documents() for s in sources), total)  # fmt: skip


def _shards_split(spec: CorpusSpec, split: str, tokenizer_path: Optional[Path]) -> Optional[TokenizedCorpus]:
    """A split of a linformer-preprocess folder, checked to be tokenized with `tokenizer_path`; None if absent."""
    return preprocessed_corpora(spec.path, tokenizer_path)["corpora"].get(split)


def _shards_tokenizer(specs: List[CorpusSpec]) -> Optional[Path]:
    paths = [s.path for s in specs if s.path]
    return preprocessed_corpora(paths[0], None)["tokenizer_path"] if paths else None


def named_corpora(data: Any, tok_cfg: Any, given_tokenizer: Optional[Path], with_train: bool = True) -> NamedCorpora:
    """Tokenized training sources (dataset=mixture) and named validation sets of a DatasetConfig; with_train=False
    (linformer-eval) tokenizes the validation sets only."""
    sources = parse_specs(data.sources, "dataset.sources", SOURCE_KEYS) if data.name == "mixture" else []
    valid_specs = parse_specs(data.valid_sets, "dataset.valid_sets", VALID_KEYS)
    texts: Dict[str, Source] = {}
    held: Dict[str, Source] = {}
    own_valid = not valid_specs and not data.valid_files
    for spec in sources:
        if spec.path:
            continue
        source = spec_source(spec, data, f"dataset.sources[{spec.name}]", "train")
        if own_valid:
            parts = held_out(source, data.valid_fraction)
            source, held[spec.name] = parts["train"], parts["valid"]
        texts[spec.name] = source
    valid_texts = {s.name: spec_source(s, data, f"dataset.valid_sets[{s.name}]", "validation")
                   for s in valid_specs if not s.path}  # fmt: skip
    if data.valid_files:  # one unnamed set beside a mixture
        paths = expand_paths(data.valid_files, "dataset.valid_files", data.file_glob, announce=True)
        check_sources(paths, "dataset.valid_files", data.text_field, data.encoding_errors)
        valid_texts["valid"] = file_source(paths, data.text_field, data.encoding_errors)
    tokenizer_path = given_tokenizer or _shards_tokenizer(sources + valid_specs)
    if tokenizer_path is None:  # a mixture of text sources: one tokenizer trained on all of them
        tokenizer_path = cached_tokenizer(data.cache_dir, chained(list(texts.values())), tok_cfg.vocab_size,
                                          tok_cfg.min_frequency, tok_cfg.max_train_bytes)  # fmt: skip
    tokenizer = load_tokenizer(tokenizer_path)
    eos = special_ids(tokenizer)["eos"]

    def tokenized(source: Source) -> TokenizedCorpus:
        return cached_corpus(data.cache_dir, source, tokenizer_path, tokenizer, eos)

    train: Dict[str, TokenizedCorpus] = {}
    valid: Dict[str, TokenizedCorpus] = {}
    for spec in sources:
        if spec.path and with_train:
            train[spec.name] = _required(_shards_split(spec, "train", tokenizer_path), spec, "train")
        if spec.path:
            held_split = _shards_split(spec, "valid", tokenizer_path) if own_valid else None
            if held_split is not None:
                valid[spec.name] = held_split
        else:
            if with_train:
                train[spec.name] = tokenized(texts[spec.name])
            if spec.name in held:
                try:
                    valid[spec.name] = tokenized(held[spec.name])
                except UserError as err:  # say which source has too few documents to hold any out
                    raise UserError(f"dataset.sources[{spec.name}]: {err}; or name them in dataset.valid_sets") from None
    for spec in valid_specs:
        if spec.path:
            valid[spec.name] = _required(_shards_split(spec, "valid", tokenizer_path), spec, "valid")
        else:
            valid[spec.name] = tokenized(valid_texts[spec.name])
    if "valid" in valid_texts and not valid_specs:
        valid["valid"] = tokenized(valid_texts["valid"])
    provenance = {"sources": {n: s.spec for n, s in texts.items()}, "valid_sets": {n: s.spec for n, s in valid_texts.items()},
                  "preprocessed": {s.name: s.path for s in sources + valid_specs if s.path}}  # fmt: skip
    return NamedCorpora(tokenizer_path, train, valid, provenance)


def _required(corpus: Optional[TokenizedCorpus], spec: CorpusSpec, split: str) -> TokenizedCorpus:
    if corpus is None:
        raise UserError(f"{spec.name}: path={spec.path} has no {split} split (linformer-preprocess wrote none)")
    return corpus
