"""Stage 0, the data: manifest, dataset readers, images, label taxonomy, near-duplicates and the
synthetic multi-lab generator (:mod:`dorl.data.synth`)."""
