"""Infrastructure every layer may use: checkpoint folders and their hashes, LoRA files, media
input, tiny tokenizers, library patches, and the click form of a declared option. Imports only
:mod:`zoo.errors`; knows no family and no contract."""
