"""From raw DExperts replies to the BIG5-CHAT dataset and its quality: schema, cleaning,
refusals, near-duplicates, the dataset, quality against the trait classifier."""
