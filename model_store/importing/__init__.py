"""Import checkpoints in Florence-2's original (``trust_remote_code``) layout.

``fashion-florence model import SRC OUT`` reads an original-layout directory (config,
tokenizer, preprocessor, safetensors or a weights-only ``pytorch_model.bin``) and writes a
native transformers directory with its manifest; every source tensor is accounted for.
Nothing here executes code from the checkpoint.
"""

from model_store.importing.errors import CheckpointImportError

__all__ = ["CheckpointImportError"]
