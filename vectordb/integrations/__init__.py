"""Adapters that let other frameworks use a :mod:`vectordb` namespace as their vector store.

Each module imports its framework on its own, so ``import vectordb`` stays light:

- :mod:`vectordb.integrations.langchain`: ``VectorDBVectorStore``, a LangChain ``VectorStore``
  (extra ``vectordb[langchain]``);
- :mod:`vectordb.integrations.llama_index`: ``VectorDBVectorStore``, a LlamaIndex
  ``BasePydanticVectorStore`` (extra ``vectordb[llamaindex]``).
"""
