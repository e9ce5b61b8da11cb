"""From dataset config to tokenized train/valid corpora: sources, held-out splits, tokenizer, cached shards.

Everything built here is cached under dataset.cache_dir by a hash of its inputs (file contents, dataset
fingerprints, tokenizer), so a second run starts at once and a changed input is rebuilt.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from tokenizers import Tokenizer

from linformer_pt.data.binarize import TokenizedCorpus, load_shards, write_shards
from linformer_pt.data.cache import cached_dir, read_manifest, sha256_file
from linformer_pt.data.default_corpus import build_default_corpus, in_valid
from linformer_pt.data.sources import (
    as_text_documents,
    check_sources,
    expand_paths,
    hub_documents,
    iter_documents,
    load_hub_dataset,
)
from linformer_pt.data.tokenizer import TEXT_ENCODING
from linformer_pt.errors import UserError


@dataclass
class Source:
    """A stream of documents and a JSON-able description that changes whenever its content does."""

    spec: Dict[str, Any]
    documents: Callable[[], Iterator[str]]
    num_bytes: Optional[int] = None  # for progress bars, when known


def file_source(paths: List[Path], text_field: str, errors: str) -> Source:
    files = [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths]
    spec = {"files": files, "text_field": text_field, "errors": errors}
    return Source(spec, lambda: iter_documents(paths, text_field, errors), sum(f["bytes"] for f in files))


def hub_source(name: str, config: str, split: str, text_field: str) -> Source:
    data = load_hub_dataset(name, config, split, text_field)
    # The fingerprint changes with the dataset's content, so a new version is tokenized anew.
    spec = {"hub": name, "config": config, "split": split, "text_field": text_field, "fingerprint": data._fingerprint}
    return Source(spec, lambda: hub_documents(data, text_field))


def held_out(source: Source, fraction: float) -> Dict[str, Source]:
    """Split a source's documents into train/valid by a hash of their text (stable across runs), on the fly.

    Each document is assigned as it is read (default_corpus.in_valid), so nothing is held or copied; the
    documents are those the earlier held-out text files gave (as_text_documents), so splits are unchanged.
    """

    def split_source(split: str) -> Source:
        def documents() -> Iterator[str]:
            count = 0
            for doc in source.documents():
                if in_valid(doc, fraction) == (split == "valid"):
                    for part in as_text_documents(doc):
                        count += 1
                        yield part
            if count == 0:
                raise UserError(
                    f"dataset.valid_fraction={fraction} leaves no {split} documents; "
                    "give dataset.valid_files or more documents"
                )

        share = fraction if split == "valid" else 1.0 - fraction  # an estimate, for progress bars only
        size = None if source.num_bytes is None else int(source.num_bytes * share)
        return Source({"held_out_from": source.spec, "valid_fraction": fraction, "split": split}, documents, size)

    return {split: split_source(split) for split in ("train", "valid")}


def resolve_sources(data: Any) -> Dict[str, Source]:
    """Train and valid sources of a DatasetConfig (name: default, text or hf)."""
    if data.name == "default":
        files = build_default_corpus(data.cache_dir, data.valid_fraction)
        return {split: file_source([files[split]], "text", "strict") for split in ("train", "valid")}
    if data.name == "hf":
        train = hub_source(data.hf_name, data.hf_config, data.hf_train_split, data.text_field)
        if data.valid_sets:  # named validation sets replace the split (data/named_corpora.py)
            return {"train": train}
        if not data.hf_valid_split:
            return held_out(train, data.valid_fraction)
        return {"train": train, "valid": hub_source(data.hf_name, data.hf_config, data.hf_valid_split, data.text_field)}
    sources = {}
    for split, patterns in (("train", data.train_files), ("valid", data.valid_files)):
        if split == "valid" and not patterns:
            if data.valid_sets:  # named validation sets instead: hold nothing out
                return sources
            return held_out(sources["train"], data.valid_fraction)
        paths = expand_paths(patterns, f"dataset.{split}_files", data.file_glob, announce=True)
        check_sources(paths, f"dataset.{split}_files", data.text_field, data.encoding_errors)
        sources[split] = file_source(paths, data.text_field, data.encoding_errors)
    return sources


def cached_corpus(cache_dir: str, source: Source, tokenizer_path: Path, tokenizer: Tokenizer, eos_id: int) -> TokenizedCorpus:
    """The source tokenized into shards, cached by the tokenizer's and the source's content."""
    spec = {"tokenizer": sha256_file(tokenizer_path), "encoding": TEXT_ENCODING, "source": source.spec}

    folder = cached_dir(cache_dir, "tokens", spec, lambda f: write_shards(source.documents(), tokenizer, eos_id, f))
    return load_shards(folder)


def preprocessed_corpora(path: str, tokenizer_path: Optional[Path]) -> Dict[str, Any]:
    """Corpora and tokenizer of a folder made by linformer-preprocess, checked against `tokenizer_path` if given."""
    folder = Path(path).expanduser()
    if not (folder / "manifest.json").is_file():
        raise UserError(f"dataset.path={path} is not a finished linformer-preprocess folder (no manifest.json)")
    manifest = read_manifest(folder)
    if manifest.get("encoding") != TEXT_ENCODING:  # older shards may hold special ids made from corpus text
        raise UserError(
            f"dataset.path={path} was made by an older linformer-preprocess (it read \"<mask>\" etc. in the text "
            "as special tokens); re-run linformer-preprocess with the same output to rebuild it"
        )
    own = folder / "tokenizer.json"
    if tokenizer_path is not None and sha256_file(tokenizer_path) != manifest["tokenizer_sha256"]:
        raise UserError(
            f"dataset.path={path} was tokenized with another tokenizer than tokenizer.path={tokenizer_path}; "
            "re-run linformer-preprocess with it, or drop tokenizer.path"
        )
    corpora = {split: load_shards(folder / split) for split in manifest["splits"]}
    return {"tokenizer_path": own, "corpora": corpora, "manifest": manifest}
