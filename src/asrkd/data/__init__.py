"""Data: LibriSpeech preparation, the embedded corpus, batches and the tokenizer."""
