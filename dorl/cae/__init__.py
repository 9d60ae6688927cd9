"""Stage 1b, the cross-domain autoencoder: models, alignment losses, domain-balanced batches and
training. ``dorl embed`` runs it from :mod:`dorl.pipeline.embed`."""
