"""Model organisms: small Llama models trained on the in-context linear-function task.

Modules: ``tokenizer`` (one token per integer 0..999), ``data`` (task sequences),
``train`` (training CLI), ``measure`` (accuracy, ablation, patching, model card).
"""
