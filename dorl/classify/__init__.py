"""Stage 2, classification on stored embeddings: the classifier registry, splitting protocols,
feature inputs, the run, its reports and the label-free feature baselines."""
