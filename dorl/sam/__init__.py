"""Stage 1a, segmentation: SAM models and checkpoints, LoRA surgery, label-free pseudo-masks,
fine-tuning, inference (masks, crops and encoder features) and mask evaluation."""
