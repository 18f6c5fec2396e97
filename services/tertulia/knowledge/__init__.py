"""The knowledge base: documents read and chunked, embedded through an OpenAI-compatible
/v1/embeddings, stored in Weaviate and searched with hybrid BM25 + vector queries."""
