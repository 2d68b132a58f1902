"""Alternative implementations of ``EngineProtocol`` (optional extras).

``trtllm``: TensorRT-LLM's LLM API with its StreamingLLM support (extra ``trtllm``).
"""
