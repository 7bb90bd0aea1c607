"""Tokenizers, grain pipelines, the embedded corpus and synthetic datasets.

The trainer needs only `make_datasets(config) -> Datasets` (pipeline.py; images and frame
latents for the continuous model kinds come from continuous.py and images.py); `ebt prepare`
calls `prepare_shards` (prepare.py). Sources of documents are in sources.py (stdlib, text)
and synthetic.py (Dyck words, addition), tokenizers in tokenizers.py.
"""

from ebt_jax.data.pipeline import Datasets, TrainIterator, make_datasets, validate_data_config
from ebt_jax.data.prepare import prepare_shards
from ebt_jax.data.tokenizers import ByteTokenizer, HFTokenizer, make_tokenizer

__all__ = ["Datasets", "TrainIterator", "make_datasets", "validate_data_config",
           "prepare_shards", "ByteTokenizer", "HFTokenizer", "make_tokenizer"]
