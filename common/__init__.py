"""What the device and the cloud both use, in one home both import: the tokenizer and chat template,
sampling, the model config, the package manifest, real-text prompts, the wire protocol and its client.

Dependencies point one way: ``common`` imports nothing else of pdlink; ``edge`` (the device) imports
``common``; ``compile`` imports ``common``; ``cloud`` imports ``common`` and ``edge`` (a cloud may run the
device's engine); the CLI and the benchmarks sit on top.
"""
