"""Hugging Face interop: translate a local Hugging Face model directory (config.json + safetensors) into llm_jax's
config keys and portable parameter names (checkpoint/params.py). One file per architecture."""
