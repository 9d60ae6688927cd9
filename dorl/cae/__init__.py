"""Stage 1b, the cross-domain autoencoder: models, alignment losses, domain-balanced batches,
training, domain-invariance figures, and ``dorl embed`` end to end (:mod:`dorl.cae.embed`)."""
