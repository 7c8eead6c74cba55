"""offline_agent: an Auto-GPT-style agent that runs on local GGUF models with no network."""

__version__ = "0.1.0"
