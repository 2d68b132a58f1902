"""A conversation as both engines see it, below the native engine and the TensorRT-LLM adapter.

chat_format.py  messages -> the tokens of one round (the model's chat template, control tokens kept out)
stream.py       Conversation: the token stream a StreamingLLM cache holds, its counters and record
detokenizer.py  sampled ids -> text that cannot change any more, stop strings
"""
