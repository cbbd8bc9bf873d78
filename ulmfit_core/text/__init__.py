"""From a corpus to the documents a model trains on: sources, raw shards, tokens, vocab, ids.

    sources     what `--data` names (a tarball, a folder, tables, s3://), and its readers
    imdb        the aclImdb tarball and folder
    ingest      each file (or run of a Parquet file's row groups) into raw shards, then joined
    sampling    the `--limit` sample and the held-out test split, by seeded draws
    tables      CSV and Parquet files a user gives or gets back (predict, score)
    rules       fastai's text rules
    spacy_port  spaCy's splitting as the word tokenizer reproduces it
    tokenize    the word tokenizer (spaCy + fastai rules) and the shard functions
    subword     SentencePiece subwords
    vocab       fastai's vocabulary: counts, numericalization, decoding
    data        id shards read back as documents (`Docs`), and their splits
"""
