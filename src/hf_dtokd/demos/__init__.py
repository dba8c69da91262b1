"""The embedded defaults (no download): ``python -m hf_dtokd.demos.digits`` and ``hf_dtokd.demos.shapes``.
Nothing in the library imports them."""
