"""STAND-IN for vLLM in tests (see tests/vllm_standin/README.md); not vLLM."""
