"""Pictures of the embeddings: UMAP by domain and by class."""
