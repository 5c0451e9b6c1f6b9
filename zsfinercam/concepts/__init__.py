"""The concept head: prompt templates and vocabularies, text encoding, contrast rules."""
