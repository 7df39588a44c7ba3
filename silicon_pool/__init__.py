"""silicon-pool: one OpenAI-compatible endpoint in front of many SiliconFlow API keys."""

__version__ = "0.1.0"
