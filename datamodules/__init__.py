"""unizoo data: sources of Samples and the one mixed-task DataModule."""
