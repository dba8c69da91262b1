"""Loading students and teachers by Hub id or folder (transformers and timm), and reading their outputs."""
