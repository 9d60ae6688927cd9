"""Stage 2, classification on stored embeddings: the classifier registry, splitting protocols,
feature inputs, label-free adaptations and scores, the run, its scores, aggregates, reports and
figures, and prediction with a saved model."""
