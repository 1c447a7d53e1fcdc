"""Stage 'infer': applying trained models (predictions, brain-age gap, Grad-RAM saliency, brainage predict on new scans). Never imports the trainer."""
