"""STAND-IN for vLLM in tests; not vLLM."""
