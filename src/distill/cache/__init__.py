"""Teacher-output cache: run an expensive teacher once, train students against its answers.

A cache is a folder::

    layout.json                  what every shard holds (kind, k, dtypes, fingerprint)
    shard-00000.<field>.npy      one file per field per shard (numpy, memory-mappable)
    shard-00000.json             the shard's rows and each file's bytes and SHA-256;
                                 written last, so a shard without it is not done
    manifest.json                all shards, totals and bytes per token; written once
                                 every shard is done

Fields per example: ``example_id`` (int64), ``input_hash`` (a 64-bit BLAKE2 digest of the
model inputs the teacher saw, to catch a cache read against other data), then either
``logits`` (kind ``dense``: float32, exact; for small label spaces) or, for language
models (kind ``topk``), per position the ``ids`` of the k most likely tokens in the
narrowest integer type that holds the vocabulary, their ``logprobs`` (16-bit by default)
and ``tail``, the log of the remaining probability mass (see ``losses.sparse``).

Writing is resumable and parallel: shard files are written to a temporary name and
renamed, the shard's JSON last; a rerun skips finished shards, so a killed job continues
where it stopped, and ``worker=i, workers=n`` builds every n-th shard, so n machines can
fill one folder (or several folders copied together). Reading memory-maps the shards
(several processes share the pages) and checks each shard's SHA-256 the first time it is
touched.
"""

from distill.cache.layout import (
    FORMAT,
    KEY_FIELDS,
    LOGPROB_DTYPES,
    Layout,
    example_ids,
    input_hashes,
    narrowest_id_dtype,
)
from distill.cache.reader import CacheReader, read_manifest
from distill.cache.writer import (
    CacheWriter,
    build_cache,
    damaged_shards,
    discard_shards,
    finalize_cache,
    teacher_arrays,
)
from distill.errors import CacheError

__all__ = [
    "FORMAT",
    "KEY_FIELDS",
    "LOGPROB_DTYPES",
    "CacheError",
    "CacheReader",
    "CacheWriter",
    "Layout",
    "build_cache",
    "damaged_shards",
    "discard_shards",
    "example_ids",
    "finalize_cache",
    "input_hashes",
    "narrowest_id_dtype",
    "read_manifest",
    "teacher_arrays",
]
