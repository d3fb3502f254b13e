"""Serving: specialists behind an OpenAI-compatible API, many adapters on one base model."""
