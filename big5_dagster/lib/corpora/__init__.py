"""The seed corpora: canonical schemas, hub and local loaders, the configured source,
synthetic posts and scenarios, trait labels and splits."""
