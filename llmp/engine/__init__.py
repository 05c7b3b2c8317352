"""The engine: continuous batching over llama.cpp, sampling, chat templates, tools, grammars, the model pool."""
