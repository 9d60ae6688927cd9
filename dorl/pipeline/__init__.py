"""Stage 1 end to end: ``dorl embed`` (:mod:`dorl.pipeline.embed`) and ``dorl apply``
(:mod:`dorl.pipeline.apply`), from the manifest through LoRA-SAM, the cross-domain stage and the
cell features to ``features.h5ad``, with the embedding's domain-invariance figures
(:mod:`dorl.pipeline.invariance`)."""
