"""Fine-tuning Florence-2: the pipeline's trainer and the colour-demo fine-tune."""
